"""Start, watch and stop a real vLLM OpenAI-compatible server: the Python API of `make serve`.

The engine runs in its own process group, so a stop takes down the API server and every
engine-core worker it spawned, and a Ctrl-C in the terminal reaches only us: we then stop the
engine in order (SIGTERM to the group, SIGKILL after a grace period). The engine stays in our
session, attached or detached (see `group_options`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from config.settings import REPO_ROOT, ServingSettings, loopback_url
from serving.command import (
    ENGINE_MODULE,
    ROUTER_MODULE,
    Device,
    EngineCommand,
    is_local_model,
    render_command,
    resolve_device,
    shell_line,
)
from serving.errors import ServingError

log = logging.getLogger("serving")
LOG_TAIL_LINES = 20
_POLL_S = 0.5
_PR_SET_PDEATHSIG = 1
SERVER_MARKERS = (ENGINE_MODULE, ROUTER_MODULE, "vllm::router")
"""What the command line of a server we started contains (the router renames itself `vllm::router`)."""
# "SafetensorError: ..." after vLLM's "(Worker pid=1) ERROR 11-21 08:28:57 [file.py:9] " prefix.
_EXCEPTION_LINE = re.compile(
    r"^(?:\(\w+ pid=\d+\) )?(?:ERROR [\d\- :]+\[[^\]]+\] )?((?:\w+\.)*\w*(?:Error|Exception): .+)$"
)


class ServerProcess:
    """A server we spawn in a process group of its own, wait for on `/health`, and stop as a group."""

    what = "the server"
    """How messages name it."""

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str],
        log_path: Path,
        *,
        startup_timeout_s: float,
        grace_s: float,
        detached: bool,
    ):
        """`detached` servers outlive this process (`python -m serving start`); others die with it."""
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.startup_timeout_s = startup_timeout_s
        self.grace_s = grace_s
        self.detached = detached
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None
        """Seconds from spawn to a healthy `/health`, once started."""
        self._spawned_at = 0.0

    @property
    def root_url(self) -> str:
        raise NotImplementedError

    @property
    def base_url(self) -> str:
        """The OpenAI base URL clients use (`.../v1`)."""
        return f"{self.root_url}/v1"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self, timeout_s: float | None = None) -> Self:
        """Spawn the server and return once `/health` answers; raise ServingError otherwise."""
        self.spawn()
        self.wait_ready(timeout_s)
        return self

    def spawn(self) -> None:
        """Start the process without waiting for it (several servers can then start side by side)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._spawned_at = time.monotonic()
        with self.log_path.open("wb") as log_file:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                cwd=REPO_ROOT,
                **group_options(),
                # Runs only a prctl() resolved in the parent: nothing that could take a lock.
                preexec_fn=None if self.detached else _die_with_parent,  # noqa: PLW1509
            )

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Return once `/health` answers 200; on failure or interrupt stop the server and raise."""
        try:
            self._wait_healthy(timeout_s or self.startup_timeout_s)
        except BaseException:  # includes Ctrl-C and SIGTERM while waiting: leave nothing behind
            self.stop()
            raise
        self.startup_s = time.monotonic() - self._spawned_at

    def _wait_healthy(self, timeout_s: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                cause = first_exception(self.log_path)
                raise ServingError(
                    f"{self.what} exited with code {code} during start-up"
                    + (f": {cause}" if cause else "")
                    + f"; last lines of {self.log_path}:\n{tail(self.log_path)}"
                )
            if self.health():
                return
            time.sleep(_POLL_S)
        raise ServingError(
            f"{self.what} was not healthy after {timeout_s:.0f} s (serving.startup_timeout_s); "
            f"last lines of {self.log_path}:\n{tail(self.log_path)}"
        )

    def shell(self) -> str:
        return shell_line(self.env, self.argv)

    def health(self) -> bool:
        """True when the server answers `/health` with 200."""
        return is_healthy(self.root_url)

    def metrics(self) -> str:
        """The Prometheus text of `/metrics` (prefix-cache hits, speculative drafts, ...)."""
        response = httpx.get(f"{self.root_url}/metrics", timeout=10.0)
        response.raise_for_status()
        return response.text

    def stop(self) -> None:
        """Stop the whole process group; idempotent."""
        if self.process is None:
            return
        stop_process_group(self.process.pid, self.grace_s)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        self.process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class EngineServer(ServerProcess):
    """One vLLM server process (group) for the given settings; also a context manager."""

    what = "the vLLM engine"

    def __init__(
        self,
        serving: ServingSettings,
        *,
        device: Device | None = None,
        log_path: Path | None = None,
        detached: bool = False,
        command: EngineCommand | None = None,
    ):
        """`detached` engines outlive this process (`python -m serving start`); others die with it.
        `command` replaces the one rendered from `serving` (a replica's, with its core binding)."""
        self.serving = serving
        self.command: EngineCommand = command or render_command(serving, device or resolve_device(serving.device))
        super().__init__(
            self.command.argv,
            dict(self.command.env),
            log_path or serving.run_dir / f"engine-{serving.port}.log",
            startup_timeout_s=serving.startup_timeout_s,
            grace_s=serving.shutdown_grace_s,
            detached=detached,
        )

    @property
    def root_url(self) -> str:
        return root_url(self.serving)

    def spawn(self) -> None:
        check_model(self.serving.model)
        check_port_free(self.serving.host, self.serving.port)
        for note in self.command.notes:
            log.info("%s", note)
        super().spawn()


def group_options() -> dict[str, Any]:
    """`Popen` options giving a server a process group of its own, in our session.

    Linux schedules each session as one CPU group (autogroup). The CPU build pins its worker to a
    core; from a session of its own it starved a client of ours on that core for a whole answer,
    so the first streamed chunk came with the last (docs/engineering-notes.md). In one session the
    two share the core fairly. A detached server still outlives our terminal: a hangup reaches
    only the terminal's foreground group, and ours is a background one.
    """
    return {"process_group": 0}


def root_url(serving: ServingSettings) -> str:
    """Where a client on this machine reaches the server (a wildcard bind is reached on loopback)."""
    return loopback_url(serving.host, serving.port)


def is_healthy(url: str) -> bool:
    """True when the server at `url` (without `/v1`) answers `/health` with 200."""
    try:
        return httpx.get(f"{url}/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def check_model(model: str) -> None:
    """A value meant as a local folder must be a model folder; hub ids are left to vLLM."""
    if not is_local_model(model):
        return
    path = Path(model)
    if not path.is_dir():
        raise ServingError(
            f"serving.model: local model folder {path} does not exist; build the offline model with "
            "`make tiny-model`, or set RAG_SERVING__MODEL to a model folder or a Hugging Face id"
        )
    if not (path / "config.json").is_file():
        raise ServingError(f"serving.model: {path} is not a model folder (no config.json in it)")


def check_port_free(host: str, port: int, setting: str = "serving.port") -> None:
    """Fail fast, before a slow engine start, when something already listens on the port."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as vLLM binds: TIME_WAIT is fine
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                env_var = "RAG_" + setting.upper().replace(".", "__")
                raise ServingError(
                    f"{setting}: port {port} on {host} is already in use; stop what listens there "
                    f"(`make serve-stop` if it is our engine) or choose another with {env_var}"
                ) from None
            raise ServingError(f"serving.host: cannot listen on {host}:{port}: {exc.strerror}") from None


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS considers free right now (for tests and benchmarks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def group_pids(pgid: int) -> list[int]:
    """Live processes in process group `pgid` (zombies excluded), read from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "(comm)": state ppid pgrp ...
        if fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(entry.name))
    return pids


def stop_process_group(pgid: int, grace_s: float) -> None:
    """SIGTERM the group, wait up to `grace_s` for all of it to exit, then SIGKILL what is left."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not group_pids(pgid):
                return
            time.sleep(0.2)
        if sig == signal.SIGTERM:
            log.warning("engine group %d still running %.0f s after SIGTERM: killing it", pgid, grace_s)


_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the launcher dies, even by SIGKILL (Linux).

    Linux ties this to the *thread* that spawned the child: a non-detached server started from a
    worker thread is stopped as soon as that thread ends, so start it from one that outlives it.
    """
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


def first_exception(path: Path) -> str | None:
    """The first exception line of an engine log: the root cause, which the tail often only cites."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for index, line in enumerate(lines):
        match = _EXCEPTION_LINE.match(line.rstrip())
        if match:
            cause = match.group(1)
            if "validation error" in cause and index + 1 < len(lines):  # pydantic puts the reason next
                cause += ": " + lines[index + 1].strip()[:300]
            return cause
    return None


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with path.open(encoding="utf-8", errors="replace") as fh:
            return "".join(deque(fh, maxlen=lines)).rstrip()
    except OSError:
        return "(no log written)"


def pid_file(serving: ServingSettings) -> Path:
    """Where background servers (`python -m serving start`) leave their pids, one a line, front first."""
    return serving.run_dir / "engine.pid"


def write_pid_file(serving: ServingSettings, pids: list[int]) -> None:
    serving.run_dir.mkdir(parents=True, exist_ok=True)
    pid_file(serving).write_text("".join(f"{pid}\n" for pid in pids), encoding="utf-8")


def running_pids(serving: ServingSettings) -> list[int]:
    """The pids in the pid file that are still our servers (engine or router); a stale file is removed.

    Checking the command line means a recycled pid of some other process is never signalled.
    """
    path = pid_file(serving)
    try:
        listed = [int(word) for word in path.read_text(encoding="utf-8").split()]
    except (OSError, ValueError):
        listed = []
    pids = []
    for pid in listed:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if any(marker in cmdline for marker in SERVER_MARKERS):
            pids.append(pid)
    if not pids:
        path.unlink(missing_ok=True)
    return pids
