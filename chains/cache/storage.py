"""One scope's GPTCache store: sqlite rows (question, answer, vector) plus a faiss index.

Why it is not GPTCache's `get`/`put`:

* `get` fetches every candidate with four ORM queries and a commit that rewrites its last-access
  time; with five candidates that was most of a hit's non-embedding time. Here the candidates
  come from one read-only query, and the in-memory LRU (GPTCache's eviction base) is touched
  instead; the last-access column is not kept (it only matters to GPTCache's own reports).
* `put` swallows storage errors into a log line; here they raise, so a broken store is noticed.
* GPTCache's faiss store rewrites the whole index file on every flush (about 6 MB at 4,000
  entries). Here the flush is deferred: after `flush_every` stores, after `flush_interval_s`,
  and on close. sqlite commits each row (vector included) at once, so nothing is lost when the
  process dies: on open, rows missing from the faiss file (the unflushed tail) are re-added from
  sqlite and vectors of rows sqlite no longer has are dropped.

GPTCache runs `pip install` when an optional dependency is missing; importing this module makes
that helper raise instead. `init_similar_cache_from_config` (unsafe YAML) is never called.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gptcache.utils
import numpy as np
from gptcache.utils import dependency_control


class InstallDisabledError(RuntimeError):
    """GPTCache asked to pip-install a package at run time; we never let it change the environment."""


def _refuse_install(package: str, warn: bool = False) -> None:
    raise InstallDisabledError(
        f"GPTCache tried to run 'pip install {package}'; run-time installs are disabled. "
        "Add the package to the project's dependencies instead."
    )


def disable_runtime_installs() -> None:
    """Make GPTCache's dependency helper raise instead of installing (idempotent)."""
    gptcache.utils.prompt_install = _refuse_install
    dependency_control.prompt_install = _refuse_install


# Before any GPTCache module that checks its dependencies (faiss, sqlalchemy) is imported.
disable_runtime_installs()


@dataclass(frozen=True)
class Candidate:
    """A cached question near the asked one."""

    row_id: int
    question: str
    answer: str  # the payload as stored
    cosine: float


BUSY_TIMEOUT_S = 0.25
"""How long a cache read or write waits for a sqlite lock another connection holds: a miss is
cheaper than a turn held up (sqlite's default is 5 s, behind the cache's one lock)."""


class StoreGoneError(RuntimeError):
    """The store's files were deleted or replaced while it was open."""


class ScopeStore:
    """sqlite + faiss for one scope; not thread-safe (the cache holds a lock around it)."""

    def __init__(
        self,
        path: Path,
        dimension: int,
        *,
        top_k: int,
        max_entries: int,
        flush_every: int,
        flush_interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from gptcache.manager import get_data_manager

        self.path = path
        self._top_k = top_k
        self._flush_every = flush_every
        self._flush_interval_s = flush_interval_s
        self._clock = clock
        self._sql = _sqlite_storage(path / "sqlite.db")
        self._identity = _identity(path / "sqlite.db")
        self._faiss = _faiss_index(str(path / "faiss.index"), dimension, top_k)
        self._manager = get_data_manager(
            self._sql, self._faiss, max_size=max_entries, clean_size=max(1, max_entries // 10)
        )
        self._pending = self._reconcile()
        self._last_flush = clock()

    def ensure_present(self) -> None:
        """Raise StoreGoneError when the sqlite file on disk is no longer the one opened: an open
        connection would go on serving (and storing into) a deleted file without an error."""
        if _identity(self.path / "sqlite.db") != self._identity:
            raise StoreGoneError(f"the cache store {self.path} was deleted or replaced while open")

    def search(self, vector: np.ndarray, floor: float) -> list[Candidate]:
        """Cached questions with cosine >= floor, best first (at most `top_k`)."""
        found = self._faiss.search(vector, self._top_k) or []
        # Squared L2 between normalized vectors is 2 - 2 cos.
        near = [(int(i), 1.0 - float(d) / 2.0) for d, i in found if i >= 0 and 1.0 - float(d) / 2.0 >= floor]
        rows = self._sql.rows([i for i, _ in near])
        return [Candidate(i, rows[i][0], rows[i][1], min(1.0, c)) for i, c in near if i in rows]

    def touch(self, row_id: int) -> None:
        """Mark a row as used for the LRU eviction."""
        self._manager.hit_cache_callback((None, row_id))

    def add(self, question: str, payload: str, vector: np.ndarray) -> None:
        """Commit the row to sqlite now; the faiss file follows at the next flush."""
        self._manager.import_data([question], [payload], [vector], [None])
        self._pending += 1
        if self._pending >= self._flush_every or self._clock() - self._last_flush >= self._flush_interval_s:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self._faiss.flush()
        self._pending = 0
        self._last_flush = self._clock()

    @property
    def unflushed(self) -> int:
        """Stores not yet in the faiss file (recovered from sqlite if the process dies)."""
        return self._pending

    def close(self) -> None:
        """Flush and release the files."""
        try:
            self.flush()
        finally:
            self._faiss.detach()
            self._sql.close()

    def abandon(self) -> None:
        """Release the files without writing (the store is broken and being discarded)."""
        self._faiss.detach()
        self._sql.close()

    def _reconcile(self) -> int:
        """Make the faiss index hold exactly sqlite's live rows; returns how many vectors it re-added."""
        import faiss

        live = self._sql.live_vectors()
        indexed = set(faiss.vector_to_array(self._faiss.index.id_map).tolist()) if self._faiss.index.ntotal else set()
        stale = sorted(indexed - live.keys())
        if stale:
            self._faiss.delete(stale)
        missing = [i for i in live if i not in indexed]
        if missing:
            self._faiss.add(np.stack([live[i] for i in missing]), np.asarray(missing, dtype="int64"))
        return len(missing) + len(stale)


def _identity(db: Path) -> tuple[int, int] | None:
    """Which file `db` is now (device, inode); None when there is none."""
    try:
        st = os.stat(db)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _sqlite_storage(db: Path) -> Any:
    """GPTCache's SQL storage on a sqlite file, with a one-query, read-only fetch.

    Rollback journal (TRUNCATE) with synchronous=OFF: commits wait for no fsync (about 0.05 ms)
    and only an OS crash or power loss can cost the last commits (a damaged store is then
    quarantined), which a cache can afford. Not WAL: WAL maps its `-shm` file into memory, and a
    truncated `-shm` killed the whole process with SIGBUS in a fault experiment.
    """
    from gptcache.manager.scalar_data.sql_storage import SQLStorage
    from sqlalchemy import event, select

    def pragmas(conn: Any, _record: Any) -> None:
        cursor = conn.cursor()
        cursor.execute("PRAGMA journal_mode=TRUNCATE")
        cursor.execute("PRAGMA synchronous=OFF")
        cursor.close()

    class Storage(SQLStorage):
        def __init__(self) -> None:
            super().__init__("sqlite", f"sqlite:///{db}?timeout={BUSY_TIMEOUT_S}")
            event.listen(self._engine, "connect", pragmas)
            self._engine.dispose()  # the connection that created the tables predates the pragmas

        def rows(self, ids: Sequence[int]) -> dict[int, tuple[str, str]]:
            if not ids:
                return {}
            q, a = self._ques, self._answer
            query = (
                select(q.id, q.question, a.answer)
                .join(a, a.question_id == q.id)
                .where(q.id.in_(list(ids)), q.deleted == 0)
            )
            with self._engine.connect() as conn:
                return {int(i): (str(question), str(answer)) for i, question, answer in conn.execute(query)}

        def live_vectors(self) -> dict[int, np.ndarray]:
            q = self._ques
            with self._engine.connect() as conn:
                result = conn.execute(select(q.id, q.embedding_data).where(q.deleted == 0))
                return {int(i): np.frombuffer(blob, dtype="float32") for i, blob in result}

        def close(self) -> None:
            self._engine.dispose()

    return Storage()


def _faiss_index(path: str, dimension: int, top_k: int) -> Any:
    """GPTCache's faiss store with atomic flushes, and no writes once detached."""
    import faiss
    from gptcache.manager.vector_data.faiss import Faiss

    # One query over a few thousand vectors is microseconds of work: faiss's OpenMP team only
    # spins against the embedding and the server for the two cores (19 ms a search under load).
    faiss.omp_set_num_threads(1)

    class Index(Faiss):
        def __init__(self) -> None:
            super().__init__(path, dimension, top_k)
            if self._index.d != dimension:
                raise ValueError(f"faiss index {path} has dimension {self._index.d}, expected {dimension}")
            self._detached = False

        @property
        def index(self) -> Any:
            return self._index

        def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
            self._index.add_with_ids(vectors.astype("float32"), ids)

        def flush(self) -> None:
            if self._detached:
                return
            tmp = f"{self._index_file_path}.tmp"
            faiss.write_index(self._index, tmp)
            os.replace(tmp, self._index_file_path)

        def close(self) -> None:
            self.flush()

        def detach(self) -> None:
            self._detached = True

    return Index()
