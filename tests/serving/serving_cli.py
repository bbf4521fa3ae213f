"""Run `python -m serving ...` as a user would, without ever leaving an engine behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from config.settings import REPO_ROOT


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m serving ARGS`; on timeout it gets SIGTERM (so it stops its engine) and the test fails."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", **(env or {})}
    with subprocess.Popen(
        [sys.executable, "-m", "serving", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        cwd=REPO_ROOT,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=60)
            pytest.fail(f"`python -m serving {' '.join(args)}` still running after {timeout} s:\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
