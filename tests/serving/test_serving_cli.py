"""`python -m serving` commands other than `serve`: rendering, checking, and the pid-file bookkeeping."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.command import ENGINE_MODULE
from serving.launch import free_port, group_pids
from tests.serving.serving_cli import run_cli


@pytest.fixture
def run_env(tmp_path: Path) -> dict[str, str]:
    """A private run folder (pid file, logs) and a port nothing listens on."""
    return {"RAG_SERVING__RUN_DIR": str(tmp_path), "RAG_SERVING__PORT": str(free_port())}


@pytest.fixture
def fake_engine() -> Iterator[subprocess.Popen[bytes]]:
    """A process group whose leader's command line names vLLM's server module, with one child."""
    script = "import subprocess, time; subprocess.Popen(['sleep', '300']); time.sleep(300)"
    proc = subprocess.Popen([sys.executable, "-c", script, ENGINE_MODULE], start_new_session=True)
    deadline = time.monotonic() + 10
    while len(group_pids(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    yield proc
    if proc.poll() is None:
        os.killpg(proc.pid, 9)
        proc.wait()


def test_command_prints_one_shell_line_and_notes_dropped_flags() -> None:
    done = run_cli("command", "--profile", "high_throughput", "--device", "cpu")
    assert done.returncode == 0
    [line] = done.stdout.splitlines()
    assert line.startswith("HF_HUB_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1 ")
    assert "-m vllm.entrypoints.openai.api_server" in line
    assert "--kv-cache-dtype" not in line
    assert "serving: CPU build: dropped GPU-only flag --kv-cache-dtype fp8" in done.stderr.splitlines()
    gpu = run_cli("command", "--profile", "high_throughput", "--device", "cuda")
    assert "--kv-cache-dtype fp8" in gpu.stdout and "--gpu-memory-utilization 0.95" in gpu.stdout


def test_tiny_model_quiet_prints_nothing_when_built(tiny_model_path: Path) -> None:
    done = run_cli("tiny-model", "--quiet", "--path", str(tiny_model_path))
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_stop_and_status_with_nothing_running(run_env: dict[str, str]) -> None:
    stop = run_cli("stop", env=run_env)
    assert stop.returncode == 0 and "no background engine is running" in stop.stderr
    status = run_cli("status", env=run_env)
    assert status.returncode == 1 and "not answering" in status.stdout


def test_stop_never_signals_a_recycled_pid(run_env: dict[str, str]) -> None:
    other = subprocess.Popen(["sleep", "300"])
    try:
        pid_file = Path(run_env["RAG_SERVING__RUN_DIR"]) / "engine.pid"
        pid_file.write_text(f"{other.pid}\n")
        done = run_cli("stop", env=run_env)
        assert done.returncode == 0 and "no background engine is running" in done.stderr
        assert other.poll() is None  # still alive: it is not our engine
        assert not pid_file.exists()  # the stale file is gone
    finally:
        other.kill()
        other.wait()


def test_stop_takes_down_the_whole_engine_group(run_env: dict[str, str], fake_engine: subprocess.Popen[bytes]) -> None:
    pid_file = Path(run_env["RAG_SERVING__RUN_DIR"]) / "engine.pid"
    pid_file.write_text(f"{fake_engine.pid}\n")
    status = run_cli("status", env=run_env)
    assert status.returncode == 1 and f"(pid {fake_engine.pid})" in status.stdout  # running, not healthy
    done = run_cli("stop", env=run_env)
    assert done.returncode == 0 and f"stopped the engine (pid {fake_engine.pid})" in done.stderr
    assert fake_engine.wait(timeout=10) != 0
    assert group_pids(fake_engine.pid) == [] and not pid_file.exists()


def test_start_refuses_when_its_engine_runs_but_does_not_answer(
    run_env: dict[str, str], fake_engine: subprocess.Popen[bytes]
) -> None:
    (Path(run_env["RAG_SERVING__RUN_DIR"]) / "engine.pid").write_text(f"{fake_engine.pid}\n")
    done = run_cli("start", "--profile", "test", env=run_env)
    assert done.returncode == 1
    assert f"an engine (pid {fake_engine.pid}) is running but" in done.stderr and "does not answer" in done.stderr
    assert fake_engine.poll() is None  # left alone


def test_stop_takes_down_the_router_and_every_replica_but_not_a_stranger(
    run_env: dict[str, str], fake_engine: subprocess.Popen[bytes]
) -> None:
    """The router renames itself `vllm::router`: the pid file still knows it as ours."""
    script = "import setproctitle, time; setproctitle.setproctitle('vllm::router'); time.sleep(300)"
    router = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    stranger = subprocess.Popen(["sleep", "300"])
    try:
        deadline = time.monotonic() + 10
        while b"vllm::router" not in Path(f"/proc/{router.pid}/cmdline").read_bytes():
            assert time.monotonic() < deadline, "the fake router never renamed itself"
            time.sleep(0.1)
        pids = [router.pid, fake_engine.pid, stranger.pid]
        (Path(run_env["RAG_SERVING__RUN_DIR"]) / "engine.pid").write_text("".join(f"{p}\n" for p in pids))
        done = run_cli("stop", env=run_env)
        assert done.returncode == 0 and f"stopped the engine (pid {router.pid}, {fake_engine.pid})" in done.stderr
        assert router.wait(timeout=10) != 0 and fake_engine.wait(timeout=10) != 0
        assert stranger.poll() is None
    finally:
        for proc in (router, stranger):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.engine
def test_check_reports_what_vllm_rejects(tiny_model_path: Path) -> None:
    done = run_cli("check", "--profile", "test", env={"RAG_SERVING__TOOL_CALL_PARSER": "hermez"}, timeout=300)
    assert done.returncode == 1
    assert "serving: error: vLLM rejects the cpu command: invalid tool call parser: hermez" in done.stderr


@pytest.mark.engine
def test_check_validates_every_replica_and_the_router(tiny_model_path: Path) -> None:
    replicas = {"RAG_SERVING__REPLICAS": "2"}
    done = run_cli("check", "--profile", "test", "--device", "cpu", env=replicas, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "ok: vLLM accepts the 2 cpu replica commands and vllm-router its command" in done.stdout
    bad_router = {**replicas, "RAG_SERVING__ROUTER_EXTRA_ARGS": '["--policy", "fastest"]'}
    done = run_cli("check", "--profile", "test", "--device", "cpu", env=bad_router, timeout=300)
    assert done.returncode == 1
    assert (
        "serving: error: vllm-router rejects its command: argument --policy: invalid choice: 'fastest'" in done.stderr
    )
