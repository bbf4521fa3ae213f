"""One writer per index at a time: an advisory lock released when its holder dies, even by SIGKILL.

Embedded mode: `flock` on a file in the index folder (the kernel drops it); a second ingest is
refused at once, since an embedded Chroma folder has one writing process. Shared mode: a
PostgreSQL session-level advisory lock (the server drops it with the holder's connection), so
ingests on several processes and hosts take turns; a second ingest waits up to `lock_wait_s`.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from indexing.errors import IndexLockedError, StoreUnavailableError
from indexing.layout import shared_index_name
from indexing.manifest import now_iso

if TYPE_CHECKING:
    from config.settings import IndexSettings
    from indexing.layout import IndexLayout


class WriterLock:
    """`with WriterLock(path):` holds the index for writing or raises IndexLockedError at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def __enter__(self) -> WriterLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise IndexLockedError(
                f"the index at {self.path.parent} is being written by another ingest ({holder}); "
                "wait for it to finish. Writers on several processes or hosts need shared mode (state.mode=shared)."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {now_iso()}\n".encode())
        self._fd = fd
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None


def _read_holder(fd: int) -> str:
    text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    return text or "holder unknown"


class SharedWriterLock:
    """`with SharedWriterLock(url, name, wait_s):` waits up to `wait_s` for PostgreSQL's advisory lock
    on `name`, or raises IndexLockedError naming the holder."""

    def __init__(self, url: str, name: str, wait_s: float) -> None:
        self._url = url
        self.name = name
        self._key = int.from_bytes(hashlib.sha256(f"ragchat-ingest/{name}".encode()).digest()[:8], "big", signed=True)
        self._wait_ms = int(wait_s * 1000)
        self._conn: Any = None

    def __enter__(self) -> SharedWriterLock:
        import psycopg

        holder = f"ragchat ingest pid {os.getpid()} on {socket.gethostname()}, since {now_iso()}"
        try:
            conn = psycopg.connect(self._url, autocommit=True, application_name=holder[:63], connect_timeout=10)
        except psycopg.Error as exc:
            raise StoreUnavailableError(f"cannot reach PostgreSQL for the ingest lock ({exc})") from None
        try:
            # lock_timeout bounds the wait for advisory locks too; 0 would mean "wait forever".
            conn.execute(f"SET lock_timeout = {max(1, self._wait_ms)}")
            conn.execute("SELECT pg_advisory_lock(%s)", (self._key,))
        except psycopg.errors.LockNotAvailable:
            who = _pg_holder(conn, self._key)
            conn.close()
            raise IndexLockedError(
                f"the index {self.name} is being written by another ingest ({who}); "
                f"waited {self._wait_ms / 1000:g} s (index.lock_wait_s)"
            ) from None
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._conn is not None:
            self._conn.close()  # ending the session releases the lock
            self._conn = None


def _pg_holder(conn: Any, key: int) -> str:
    row = conn.execute(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s::oid AND l.objid = %s::oid",
        ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF),
    ).fetchone()
    return str(row[0]) if row and row[0] else "holder unknown"


def writer_lock(settings: IndexSettings, layout: IndexLayout) -> WriterLock | SharedWriterLock:
    """The lock the settings call for: PostgreSQL's in shared mode, a file in the index folder otherwise."""
    if settings.state_url is None:
        return WriterLock(layout.lock)
    return SharedWriterLock(settings.state_url.get_secret_value(), shared_index_name(settings), settings.lock_wait_s)
