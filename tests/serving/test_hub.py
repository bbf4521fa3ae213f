"""Model choice for the demo: a real model where a hub answers, the offline tiny model where none
does, decided within three seconds even when the hub endpoint never answers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from serving.hub import CPU_MODEL, GPU_DRAFT, GPU_MODEL, choose_model, hub_reachable
from serving.launch import free_port
from tests.serving.serving_cli import run_cli


@pytest.fixture
def closed_endpoint(monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return url


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """Accepts connections and never answers: the probe must give up by itself."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


@pytest.fixture
def answering_hub() -> Iterator[str]:
    class Hub(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == f"/api/models/{CPU_MODEL}" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_closed_hub_endpoint_means_the_offline_model_within_3_s(closed_endpoint: str) -> None:
    started = time.monotonic()
    reachable = hub_reachable()
    assert time.monotonic() - started < 3.0
    assert reachable is False
    choice = choose_model("cpu", hub_ok=reachable)
    assert choice.model is None and choice.shell() == "" and closed_endpoint in choice.reason


def test_a_hub_that_never_answers_is_given_up_within_3_s(silent_endpoint: str) -> None:
    started = time.monotonic()
    assert hub_reachable(silent_endpoint) is False
    assert time.monotonic() - started < 3.0


def test_offline_mode_asks_no_hub(answering_hub: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_reachable(answering_hub) is False


def test_reachable_hub_picks_a_small_instruct_model_for_the_device(
    answering_hub: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert hub_reachable(answering_hub) is True
    cpu = choose_model("cpu", hub_ok=True)
    assert cpu.env() == {"RAG_SERVING__MODEL": CPU_MODEL}
    gpu = choose_model("cuda", hub_ok=True)
    assert gpu.env() == {
        "RAG_SERVING__MODEL": GPU_MODEL,
        "RAG_SERVING__QUANTIZATION": "awq",
        "RAG_SERVING__SPECULATIVE_METHOD": "draft",
        "RAG_SERVING__DRAFT_MODEL": GPU_DRAFT,
    }
    assert "reachable" in gpu.reason and GPU_DRAFT in gpu.reason


def test_pick_model_cli_prints_exports_only_when_the_hub_answers(answering_hub: str) -> None:
    env = {"HF_HUB_OFFLINE": "", "RAG_SERVING__DEVICE": "cpu"}
    online = run_cli("pick-model", env={**env, "HF_ENDPOINT": answering_hub})
    assert online.returncode == 0 and online.stdout == f"export RAG_SERVING__MODEL={CPU_MODEL}\n"
    offline = run_cli("pick-model", env={**env, "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"})
    assert offline.returncode == 0 and offline.stdout == ""
    assert "offline tiny model" in offline.stderr
    configured = run_cli("pick-model", env={**env, "HF_ENDPOINT": answering_hub, "RAG_SERVING__MODEL": "Qwen/X"})
    assert configured.returncode == 0 and configured.stdout == "" and "configured model Qwen/X" in configured.stderr
