"""Real servers for shared-state tests: a throwaway PostgreSQL cluster (`.ci/postgres`, Debian's
PostgreSQL on loopback, run as the `postgres` user when the tests run as root) and a Chroma server
(`chroma run`). Each is a context manager that stops its server and removes its data."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from config.settings import REPO_ROOT
from serving.launch import free_port

POSTGRES_SCRIPT = REPO_ROOT / ".ci" / "postgres"
CHROMA = Path(sys.executable).with_name("chroma")


@contextmanager
def postgres_server() -> Iterator[str]:
    """A fresh cluster on a free loopback port; yields its `postgresql://` URL."""
    # Directly under /tmp (not pytest's 0700 folders): the postgres user must reach the data folder.
    data = Path(tempfile.mkdtemp(prefix="rag-pg-"))
    try:
        started = subprocess.run(
            [str(POSTGRES_SCRIPT), "start", str(data), str(free_port())],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if started.returncode != 0:
            log = (data / "server.log").read_text() if (data / "server.log").is_file() else ""
            raise RuntimeError(f"PostgreSQL did not start: {started.stderr.strip()} {log[-2000:]}")
        try:
            yield started.stdout.strip().splitlines()[-1]
        finally:
            subprocess.run([str(POSTGRES_SCRIPT), "stop", str(data)], check=False, capture_output=True, timeout=120)
    finally:
        shutil.rmtree(data, ignore_errors=True)


@contextmanager
def chroma_server(data: Path) -> Iterator[int]:
    """`chroma run` over `data` on a free loopback port; yields the port."""
    port = free_port()
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
                    proc.kill()
                    raise RuntimeError(
                        f"chroma server did not start: {proc.stderr.read() if proc.stderr else ''}"
                    ) from None
                time.sleep(0.2)
        yield port
    finally:
        stop_process(proc, 15)


def stop_process(proc: subprocess.Popen[Any], grace_s: float) -> None:
    """SIGTERM, then SIGKILL if it is still there after `grace_s`."""
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def fresh_database(url: str) -> str:
    """A new, empty database on the server of `url` (for a test that must see only its own rows)."""
    import uuid

    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.rsplit("/", 1)[0] + "/" + name
