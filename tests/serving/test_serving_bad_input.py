"""Bad input to `make serve` / `python -m serving`: one clear message and a non-zero exit, fast."""

from __future__ import annotations

import json
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from config import load_settings
from serving.errors import ServingError
from serving.launch import EngineServer, check_model, first_exception, free_port, group_pids
from tests.serving.serving_cli import run_cli

STARTUP_TIMEOUT_S = 240  # the test profile's; failing "fast" means well before this


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port something else is listening on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


def test_unknown_profile_on_the_command_line() -> None:
    done = run_cli("command", "--profile", "fastest")
    assert done.returncode == 2
    assert "invalid choice: 'fastest'" in done.stderr and "low_latency" in done.stderr


def test_unknown_profile_from_the_environment() -> None:
    done = run_cli("serve", env={"RAG_PROFILE": "fastest"})
    assert done.returncode == 1
    assert "unknown profile 'fastest'" in done.stderr and "allowed: low_latency" in done.stderr
    assert "Traceback" not in done.stderr


def test_invalid_serving_value_from_the_environment_names_the_field() -> None:
    done = run_cli("command", env={"RAG_SERVING__QUANTIZATION": "awqq"})
    assert done.returncode == 1
    assert "serving.quantization" in done.stderr and "awqq" in done.stderr


@pytest.mark.parametrize("model", ["models/no-such-model", "./nowhere/model", "/nonexistent/model"])
def test_missing_local_model_folder(model: str) -> None:
    done = run_cli("serve", "--profile", "test", env={"RAG_SERVING__MODEL": model})
    assert done.returncode == 1
    assert "serving.model: local model folder" in done.stderr and "does not exist" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_folder_without_config_json_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(ServingError, match=r"not a model folder \(no config.json"):
        check_model(str(tmp_path))


def test_hub_ids_pass_the_local_model_check_and_reach_vllm_unchanged(busy_port: int) -> None:
    hub_id = "Qwen/Qwen2.5-7B-Instruct-AWQ"
    server = EngineServer(load_settings("test", serving={"port": busy_port, "model": hub_id}).serving)
    # start() checks the model, then the port: failing on the port means the hub id was let through
    with pytest.raises(ServingError, match="already in use"):
        server.start()
    assert server.command.value("--model") == hub_id and "HF_HUB_OFFLINE" not in server.command.env


def test_port_in_use_fails_before_spawning_anything(busy_port: int, tiny_model_path: Path) -> None:
    settings = load_settings("test", serving={"port": busy_port, "model": str(tiny_model_path)})
    server = EngineServer(settings.serving)
    with pytest.raises(ServingError, match=f"port {busy_port} on 127.0.0.1 is already in use"):
        server.start()
    assert server.process is None


def test_port_in_use_from_the_cli(busy_port: int, tiny_model_path: Path) -> None:
    done = run_cli("serve", "--profile", "test", env={"RAG_SERVING__PORT": str(busy_port)})
    assert done.returncode == 1
    assert f"serving.port: port {busy_port} on 127.0.0.1 is already in use" in done.stderr


@pytest.mark.engine
@pytest.mark.integration
def test_a_flag_vllm_rejects_at_start_shows_the_engine_log(tiny_model_path: Path) -> None:
    settings = load_settings(
        "test", serving={"port": free_port(), "model": str(tiny_model_path), "extra_args": ["--enable-turbo"]}
    )
    server = EngineServer(settings.serving)
    started = time.monotonic()
    with pytest.raises(ServingError) as caught:
        server.start()
    message = str(caught.value)
    assert "exited with code" in message and "during start-up" in message
    assert "unrecognized arguments: --enable-turbo" in message  # from the engine's own log tail
    assert len(message.splitlines()) <= 1 + 20
    assert time.monotonic() - started < STARTUP_TIMEOUT_S / 4  # did not sit out the health timeout
    assert server.process is None


@pytest.mark.engine
@pytest.mark.integration
def test_an_engine_dying_on_a_broken_model_exits_non_zero_with_its_last_log_lines(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model_path, broken)
    config = json.loads((broken / "config.json").read_text())
    config["architectures"] = ["TinyNoSuchForCausalLM"]  # a checkpoint vLLM has no code for
    (broken / "config.json").write_text(json.dumps(config))
    port = free_port()
    done = run_cli(
        "serve",
        "--profile",
        "test",
        env={"RAG_SERVING__MODEL": str(broken), "RAG_SERVING__PORT": str(port)},
        timeout=STARTUP_TIMEOUT_S,
    )
    assert done.returncode == 1
    assert "serving: error: the vLLM engine exited with code" in done.stderr
    [headline] = [line for line in done.stderr.splitlines() if line.startswith("serving: error:")]
    assert "ValidationError" in headline  # the root cause, named up front
    assert "TinyNoSuchForCausalLM" in done.stderr  # and explained in the log tail
    assert f"engine-{port}.log" in done.stderr
    tail = done.stderr.split("last lines of", 1)[1].splitlines()[1:]
    assert 1 <= len(tail) <= 20
    assert not _engines_on_port(port)


def _engines_on_port(port: int) -> list[int]:
    """Engine processes still alive that were started for `port` (orphans, if any)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"vllm.entrypoints.openai.api_server" in cmdline and str(port).encode() in cmdline:
                found.append(int(entry.name))
    return [pid for pid in found if group_pids(pid)]


def test_the_root_cause_is_found_behind_vllm_log_prefixes(tmp_path: Path) -> None:
    log = tmp_path / "engine.log"
    log.write_text(
        "(APIServer pid=1) WARNING 11-21 08:28:40 [system_utils.py:255] Found ulimit of 20000\n"
        "(Worker pid=13600) ERROR 11-21 08:28:57 [multiproc_executor.py:953] Traceback (most recent call last):\n"
        "(Worker pid=13600) ERROR 11-21 08:28:57 [multiproc_executor.py:953] safetensors._safetensors_rust."
        "SafetensorError: Error while deserializing header\n"
        "RuntimeError: Engine core initialization failed. See root cause above.\n"
    )
    assert first_exception(log) == "safetensors._safetensors_rust.SafetensorError: Error while deserializing header"
    log.write_text(
        "pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig\n  Value error, no\n"
    )
    assert first_exception(log) == (
        "pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig: Value error, no"
    )
    log.write_text("INFO all fine\n")
    assert first_exception(log) is None
