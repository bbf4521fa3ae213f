"""Stopping leaves no orphans: the whole engine process group goes, by SIGTERM or else SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from config.settings import REPO_ROOT
from serving.launch import free_port, group_options, group_pids, stop_process_group


def _spawn_group(script: str) -> subprocess.Popen[bytes]:
    """A process group like the engine's: a leader with children of its own."""
    return subprocess.Popen(["bash", "-c", script], start_new_session=True)


def _wait_for(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_sigterm_stops_the_leader_and_its_children() -> None:
    proc = _spawn_group("sleep 300 & sleep 300 & wait")
    assert _wait_for(lambda: len(group_pids(proc.pid)) == 3, 10)
    stop_process_group(proc.pid, grace_s=10)
    assert group_pids(proc.pid) == []
    assert proc.wait(timeout=5) != 0


def test_children_ignoring_sigterm_are_killed_after_the_grace_period() -> None:
    proc = _spawn_group("trap '' TERM; sleep 300 & sleep 300 & wait; sleep 300")
    assert _wait_for(lambda: len(group_pids(proc.pid)) == 3, 10)
    stop_process_group(proc.pid, grace_s=1)
    assert group_pids(proc.pid) == []
    assert proc.wait(timeout=5) == -signal.SIGKILL


def test_stopping_a_group_that_is_gone_is_harmless() -> None:
    proc = _spawn_group("exit 0")
    proc.wait(timeout=5)
    stop_process_group(proc.pid, grace_s=1)
    assert group_pids(proc.pid) == []


def _group_and_session(pid: int) -> tuple[int, int]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # state ppid pgrp session
    return int(fields[2]), int(fields[3])


def test_engine_gets_its_own_group_and_stays_in_our_session() -> None:
    """Same session = same CPU scheduling group (autogroup): the pinned worker cannot starve our client."""
    proc = subprocess.Popen(["sleep", "300"], **group_options())
    try:
        group, session = _group_and_session(proc.pid)
        assert group == proc.pid
        assert session == os.getsid(0)
    finally:
        stop_process_group(proc.pid, grace_s=1)
        proc.wait(timeout=5)


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _serve(tiny_model_path: Path) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "HF_HUB_OFFLINE": "1",
        "RAG_SERVING__PORT": str(free_port()),
        "RAG_SERVING__MODEL": str(tiny_model_path),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "serving", "serve", "--profile", "test"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO_ROOT,
    )


def _engine_of(serve: subprocess.Popen[str]) -> int:
    """The engine's pid, which is also its process-group id."""
    assert _wait_for(lambda: len(_children(serve.pid)) == 1, 30)
    [engine] = _children(serve.pid)
    return engine


def _finish(serve: subprocess.Popen[str]) -> None:
    """After a failed assertion, still stop the CLI (and so its engine)."""
    if serve.poll() is None:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=60)


@pytest.mark.engine
@pytest.mark.integration
def test_sigterm_to_a_healthy_serve_leaves_no_engine_process(tiny_model_path: Path) -> None:
    with _serve(tiny_model_path) as serve:
        try:
            assert serve.stdout is not None and serve.stderr is not None
            line = serve.stdout.readline()  # blocks until healthy (or the CLI gives up)
            assert line.startswith("OpenAI base URL: http://127.0.0.1:"), serve.stderr.read()
            engine = _engine_of(serve)
            assert len(group_pids(engine)) >= 3  # API server, engine core, worker
            serve.send_signal(signal.SIGTERM)
            assert serve.wait(timeout=60) == 0
        finally:
            _finish(serve)
    assert group_pids(engine) == []


@pytest.mark.engine
@pytest.mark.integration
def test_ctrl_c_during_start_up_leaves_no_engine_process(tiny_model_path: Path) -> None:
    with _serve(tiny_model_path) as serve:
        try:
            engine = _engine_of(serve)
            # Interrupt once the engine has spawned its engine-core process, mid-start-up.
            assert _wait_for(lambda: len(group_pids(engine)) >= 3, 120)
            serve.send_signal(signal.SIGINT)
            assert serve.wait(timeout=60) == 0
            assert serve.stdout is not None and serve.stdout.read() == ""  # never announced a URL
        finally:
            _finish(serve)
    assert group_pids(engine) == []
