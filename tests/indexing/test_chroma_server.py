"""`index.chroma_mode=http`: ingest into and retrieve from a real Chroma server (`chroma run`)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from config.settings import IndexSettings
from indexing import StoreUnavailableError, open_retriever
from indexing.report import IngestReport

pytestmark = pytest.mark.integration

CHROMA = Path(sys.executable).with_name("chroma")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = free_port()
    data = tmp_path_factory.mktemp("chroma-server")
    proc = subprocess.Popen(
        [str(CHROMA), "run", "--path", str(data), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"chroma server did not start: {proc.stderr.read() if proc.stderr else ''}")
                time.sleep(0.2)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_ingest_and_retrieve_through_the_server(
    settings: IndexSettings, chroma_server: int, run_ingest: Callable[..., IngestReport], embed_model: Any
) -> None:
    remote = settings.model_copy(update={"chroma_mode": "http", "chroma_port": chroma_server})

    first = run_ingest(remote)
    again = run_ingest(remote)
    passages = open_retriever(remote, embed_model=embed_model).retrieve("bowline knot", top_k=2)

    assert first.ok and first.chunks > 0 and not (Path(settings.index_dir) / "chroma").exists()
    assert again.chunks_written == 0 and again.version == first.version
    assert passages[0].source == "sailing.docx"


def test_unreachable_server_is_a_clear_error(settings: IndexSettings, run_ingest: Callable[..., IngestReport]) -> None:
    nowhere = settings.model_copy(update={"chroma_mode": "http", "chroma_port": free_port()})
    with pytest.raises(StoreUnavailableError, match=r"cannot reach the Chroma server at 127\.0\.0\.1:\d+"):
        run_ingest(nowhere)
