"""One scope's GPTCache store: SQL rows (question, answer, vector) plus a vector index.

Embedded mode (`ScopeStore.local`): a sqlite file and a faiss index in the scope's folder.
Shared mode (`ScopeStore.shared`): the rows in PostgreSQL through GPTCache's SQLAlchemy store
(tables named by the scope) and the vectors in a collection of the Chroma server, so an answer
stored by one API replica is a hit on every other. (pgvector would keep both in PostgreSQL, but
Debian 12 has no `postgresql-15-pgvector` package; the Chroma server already runs in that mode.)

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


@dataclass(frozen=True)
class SharedServers:
    """Where shared-mode scope stores live: PostgreSQL (SQLAlchemy URL) and the Chroma server."""

    sql_url: str
    chroma_host: str
    chroma_port: int
    collection_prefix: str = ""
    """Start of every collection name (a tenant's name and `-`), so tenants never share one."""


SHARED_TABLE_PREFIX = "ragcache_"
"""Tables `ragcache_<scope key>_question` / `_answer` and Chroma collections `ragcache-<scope key>`."""
_PAYLOAD_CHARS = 1_000_000
"""Column length of questions and payloads in PostgreSQL (GPTCache's default VARCHAR(1000)/(3000) would
refuse answers with their sources; sqlite ignores lengths)."""

BUSY_TIMEOUT_S = 0.25
"""How long a cache read or write waits for a sqlite lock another connection holds: a miss is
cheaper than a turn held up (sqlite's default is 5 s, behind the cache's one lock)."""


class StoreGoneError(RuntimeError):
    """The store's files were deleted or replaced while it was open."""


class ScopeStore:
    """SQL rows + vector index for one scope; not thread-safe (the cache holds a lock around it).

    Build with `ScopeStore.local(...)` or `ScopeStore.shared(...)`.
    """

    def __init__(
        self,
        name: str,
        sql: Any,
        vectors: Any,
        *,
        top_k: int,
        max_entries: int,
        flush_every: int,
        flush_interval_s: float,
        clock: Callable[[], float] = time.monotonic,
        identity_file: Path | None = None,
    ) -> None:
        from gptcache.manager import get_data_manager

        self.name = name
        self._top_k = top_k
        self._flush_every = flush_every
        self._flush_interval_s = flush_interval_s
        self._clock = clock
        self._sql = sql
        self._faiss = vectors
        self._identity_file = identity_file
        self._identity = None if identity_file is None else _identity(identity_file)
        self._manager = get_data_manager(
            self._sql, self._faiss, max_size=max_entries, clean_size=max(1, max_entries // 10)
        )
        self._pending = self._reconcile() if isinstance(vectors, _FaissIndex) else 0
        self._last_flush = clock()

    @classmethod
    def local(cls, path: Path, dimension: int, *, top_k: int, **options: Any) -> ScopeStore:
        """sqlite + faiss files in `path`."""
        sql = _sql_storage(f"sqlite:///{path / 'sqlite.db'}", "gptcache")
        try:
            vectors = _faiss_index(str(path / "faiss.index"), dimension, top_k)
        except BaseException:
            sql.close()
            raise
        return cls(str(path), sql, vectors, top_k=top_k, identity_file=path / "sqlite.db", **options)

    @classmethod
    def shared(
        cls, servers: SharedServers, chroma: Any, key: str, collection: str, *, top_k: int, **options: Any
    ) -> ScopeStore:
        """Rows in PostgreSQL, vectors in the Chroma server's `collection` (`chroma`: its HttpClient)."""
        sql = _sql_storage(servers.sql_url, f"{SHARED_TABLE_PREFIX}{key}")
        try:
            vectors = chroma.get_or_create_collection(
                collection, configuration={"hnsw": {"space": "cosine"}}, embedding_function=None
            )
        except BaseException:
            sql.close()
            raise
        return cls(f"{servers.sql_url.split('@')[-1]}/{key}", sql, _ChromaVectors(vectors), top_k=top_k, **options)

    @property
    def path(self) -> str:
        """Where the store lives (a folder, or server/table), for log lines."""
        return self.name

    def ensure_present(self) -> None:
        """Raise StoreGoneError when a local store's sqlite file on disk is no longer the one opened:
        an open connection would go on serving (and storing into) a deleted file without an error."""
        if self._identity_file is not None and _identity(self._identity_file) != self._identity:
            raise StoreGoneError(f"the cache store {self.name} was deleted or replaced while open")

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


def _sql_storage(url: str, table: str) -> Any:
    """GPTCache's SQL storage (sqlite file or PostgreSQL), with a one-query, read-only fetch.

    A sqlite file uses a rollback journal (TRUNCATE) with synchronous=OFF: commits wait for no
    fsync (about 0.05 ms) and only an OS crash or power loss can cost the last commits (a damaged
    store is then quarantined), which a cache can afford. Not WAL: WAL maps its `-shm` file into
    memory, and a truncated `-shm` killed the whole process with SIGBUS in a fault experiment.
    A sqlite lock held by another connection is waited for at most BUSY_TIMEOUT_S.
    """
    from gptcache.manager.scalar_data.sql_storage import SQLStorage
    from sqlalchemy import event, select

    sqlite = url.startswith("sqlite:")
    lengths = {"question_question": _PAYLOAD_CHARS, "answer_answer": _PAYLOAD_CHARS}

    def pragmas(conn: Any, _record: Any) -> None:
        cursor = conn.cursor()
        cursor.execute("PRAGMA journal_mode=TRUNCATE")
        cursor.execute("PRAGMA synchronous=OFF")
        cursor.close()

    class Storage(SQLStorage):
        def __init__(self) -> None:
            super().__init__(
                "sqlite" if sqlite else "postgresql",
                f"{url}?timeout={BUSY_TIMEOUT_S}" if sqlite else url,
                table,
                lengths,
            )
            if sqlite:
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


class _FaissIndex:
    """Marker base of the local faiss index (the one whose file can lag behind sqlite)."""


def _faiss_index(path: str, dimension: int, top_k: int) -> Any:
    """GPTCache's faiss store with atomic flushes, and no writes once detached."""
    import faiss
    from gptcache.manager.vector_data.faiss import Faiss

    # One query over a few thousand vectors is microseconds of work: faiss's OpenMP team only
    # spins against the embedding and the server for the two cores (19 ms a search under load).
    faiss.omp_set_num_threads(1)

    class Index(Faiss, _FaissIndex):
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


_GPTCACHE_TABLES = ("question", "answer", "session", "question_dep", "report")


class SharedScopes:
    """The shared scopes, registered in PostgreSQL with the Chroma collection that holds each one's vectors.

    The collection name carries a random suffix chosen by whoever registers the scope first, so
    rows and vectors always belong together: a scope recreated after `drop` (or a PostgreSQL
    database reset under a Chroma server that kept its data) gets a new, empty collection instead of
    old vectors whose ids now name other rows.
    """

    def __init__(self, servers: SharedServers) -> None:
        import sqlalchemy as sa

        self._engine = sa.create_engine(servers.sql_url)
        self._prefix = servers.collection_prefix
        self._table = sa.Table(
            f"{SHARED_TABLE_PREFIX}scopes",
            sa.MetaData(),
            sa.Column("key", sa.Text, primary_key=True),
            sa.Column("collection", sa.Text, nullable=False),
        )
        self._table.create(self._engine, checkfirst=True)

    def collection(self, key: str) -> str:
        """The scope's vector collection, registering the scope if it is new."""
        import uuid

        import sqlalchemy as sa
        from sqlalchemy.dialects.postgresql import insert

        name = f"{self._prefix}{SHARED_TABLE_PREFIX.rstrip('_')}-{key}-{uuid.uuid4().hex[:8]}"
        with self._engine.begin() as conn:
            conn.execute(insert(self._table).values(key=key, collection=name).on_conflict_do_nothing())
            return str(conn.execute(sa.select(self._table.c.collection).where(self._table.c.key == key)).scalar_one())

    def entries(self) -> int:
        """Live cached answers over every scope."""
        import sqlalchemy as sa

        total = 0
        with self._engine.connect() as conn:
            names = set(sa.inspect(conn).get_table_names())
            for key in conn.execute(sa.select(self._table.c.key)).scalars():
                table = f"{SHARED_TABLE_PREFIX}{key}_question"
                if table in names:
                    total += int(conn.exec_driver_sql(f'SELECT count(*) FROM "{table}" WHERE deleted = 0').scalar_one())
        return total

    def drop_all(self, chroma: Any) -> None:
        """Delete every scope's rows, tables and vector collection."""
        import sqlalchemy as sa

        with self._engine.begin() as conn:
            for key, collection in conn.execute(sa.select(self._table.c.key, self._table.c.collection)).all():
                for part in _GPTCACHE_TABLES:
                    conn.exec_driver_sql(f'DROP TABLE IF EXISTS "{SHARED_TABLE_PREFIX}{key}_{part}"')
                conn.execute(sa.delete(self._table).where(self._table.c.key == key))
                try:
                    chroma.delete_collection(collection)
                except Exception:  # never created: the scope stored no vector yet
                    continue

    def close(self) -> None:
        self._engine.dispose()


class _ChromaVectors:
    """GPTCache's vector-store interface over a Chroma server collection (cosine space).

    Writes land on the server at once (no flush); `search` reports squared L2 between normalized
    vectors (2 x cosine distance), as faiss does, so both stores share `ScopeStore.search`.
    """

    def __init__(self, collection: Any) -> None:
        self._collection = collection

    def mul_add(self, datas: Sequence[Any]) -> None:
        self._collection.add(
            ids=[str(d.id) for d in datas], embeddings=[np.asarray(d.data, dtype="float32").tolist() for d in datas]
        )

    def search(self, data: np.ndarray, top_k: int) -> list[tuple[float, int]]:
        found = self._collection.query(
            query_embeddings=[np.asarray(data, dtype="float32").tolist()], n_results=top_k, include=["distances"]
        )
        return [(2.0 * float(d), int(i)) for d, i in zip(found["distances"][0], found["ids"][0], strict=True)]

    def delete(self, ids: Sequence[int]) -> bool:
        if len(ids):
            self._collection.delete(ids=[str(i) for i in ids])
        return True

    def rebuild(self, ids: Sequence[int] | None = None) -> bool:
        return True  # the server keeps its own index

    def flush(self) -> None:
        """Nothing to write: every add is already on the server."""

    def close(self) -> None:
        """The client belongs to the cache, which closes it."""

    def detach(self) -> None:
        """Nothing local to release."""
