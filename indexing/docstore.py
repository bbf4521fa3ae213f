"""The docstore: one row per ingested file (keyed by document id) with its content hash and chunks.

It is the record of what has been committed. Chroma receives a batch's chunks first; the
docstore rows follow in one transaction, so a kill between the two leaves the file "in flight"
and the next run redoes exactly that file. BM25 and the index version are derived from here,
never from a half-written batch.

One code path through SQLAlchemy for both homes: a SQLite file in the index folder (embedded
mode) or PostgreSQL (shared mode), where the tables carry a prefix naming the Chroma server and
collection, so several indexes share one database without mixing. In shared mode the manifest
is a row here too (`manifest_text`), so every host reads the same one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from indexing.errors import StoreUnavailableError


@dataclass(frozen=True)
class DocRecord:
    """A committed file: where it was, what its bytes hashed to, how it was chunked."""

    source: str
    path: str
    file_hash: str
    size: int
    mtime_ns: int
    fingerprint: str
    file_type: str
    title: str | None
    chunks: int
    ingested_at: str


@dataclass(frozen=True)
class ChunkRow:
    chunk_id: str
    ord: int
    tokens: str
    """Space-joined BM25 tokens, so BM25 can be rebuilt without re-reading any file."""


@dataclass(frozen=True)
class Inflight:
    source: str
    path: str
    action: str


class _Tables:
    """The docstore's tables, their names prefixed (empty prefix: the embedded SQLite names)."""

    def __init__(self, prefix: str) -> None:
        self.meta = sa.MetaData()
        self.documents = sa.Table(
            f"{prefix}documents",
            self.meta,
            sa.Column("source", sa.Text, primary_key=True),
            sa.Column("path", sa.Text, nullable=False),
            sa.Column("file_hash", sa.Text, nullable=False),
            sa.Column("size", sa.BigInteger, nullable=False),
            sa.Column("mtime_ns", sa.BigInteger, nullable=False),
            sa.Column("fingerprint", sa.Text, nullable=False),
            sa.Column("file_type", sa.Text, nullable=False),
            sa.Column("title", sa.Text),
            sa.Column("chunks", sa.Integer, nullable=False),
            sa.Column("ingested_at", sa.Text, nullable=False),
        )
        self.chunks = sa.Table(
            f"{prefix}chunks",
            self.meta,
            sa.Column("chunk_id", sa.Text, primary_key=True),
            sa.Column("source", sa.Text, nullable=False),
            sa.Column("ord", sa.Integer, nullable=False),
            sa.Column("tokens", sa.Text, nullable=False),
            sa.Index(f"{prefix}chunks_by_source", "source"),
        )
        self.inflight = sa.Table(
            f"{prefix}inflight",
            self.meta,
            sa.Column("source", sa.Text, primary_key=True),
            sa.Column("path", sa.Text, nullable=False),
            sa.Column("action", sa.Text, sa.CheckConstraint("action IN ('upsert', 'remove')"), nullable=False),
        )
        self.manifest = sa.Table(
            f"{prefix}manifest",
            self.meta,
            sa.Column("name", sa.Text, primary_key=True),
            sa.Column("body", sa.Text, nullable=False),
        )


_MANIFEST_ROW = "manifest"


class DocStore:
    """One writer (the ingest holding the lock), readers at any time (SQLite in WAL mode, or PostgreSQL).

    `where`: a Path is a SQLite file (opened read-only with `readonly`); a string is a SQLAlchemy
    URL, whose tables get `prefix`.
    """

    def __init__(self, where: Path | str, *, readonly: bool = False, prefix: str = "") -> None:
        self._t = _Tables(prefix)
        if isinstance(where, Path):
            self._engine = _sqlite_engine(where, readonly)
        else:
            self._engine = sa.create_engine(where, pool_pre_ping=True)
        self._dialect = self._engine.dialect.name
        if readonly and self._dialect == "sqlite":
            return
        try:
            with self._engine.begin() as conn:
                if self._dialect == "postgresql":
                    # Hosts starting together would both create the tables: one at a time.
                    key = int.from_bytes(hashlib.sha256(f"ragchat-docstore/{prefix}".encode()).digest()[:8], "big")
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key - (1 << 63)})
                self._t.meta.create_all(conn)
        except sa.exc.OperationalError as exc:
            self._engine.dispose()
            raise StoreUnavailableError(f"cannot open the index docstore ({exc.orig or exc})") from None

    def close(self) -> None:
        self._engine.dispose()

    def records(self) -> dict[str, DocRecord]:
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(self._t.documents)).mappings().all()
        return {row["source"]: DocRecord(**row) for row in rows}

    def counts(self) -> tuple[int, int]:
        count = sa.func.count()
        with self._engine.connect() as conn:
            docs = conn.execute(sa.select(count).select_from(self._t.documents)).scalar_one()
            chunks = conn.execute(sa.select(count).select_from(self._t.chunks)).scalar_one()
        return int(docs), int(chunks)

    def counts_by_type(self) -> dict[str, tuple[int, int]]:
        d = self._t.documents
        query = sa.select(d.c.file_type, sa.func.count(), sa.func.sum(d.c.chunks)).group_by(d.c.file_type)
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return {row[0]: (int(row[1]), int(row[2] or 0)) for row in rows}

    def sorted_chunk_ids(self) -> Iterator[str]:
        c = self._t.chunks
        with self._engine.connect() as conn:
            for row in conn.execute(sa.select(c.c.chunk_id).order_by(c.c.chunk_id)):
                yield row[0]

    def chunk_tokens(self) -> Iterator[tuple[str, str]]:
        """(chunk id, tokens) in chunk-id order, read in one statement: the BM25 corpus."""
        c = self._t.chunks
        with self._engine.connect() as conn:
            for row in conn.execute(sa.select(c.c.chunk_id, c.c.tokens).order_by(c.c.chunk_id)):
                yield row[0], row[1]

    def inflight(self) -> list[Inflight]:
        i = self._t.inflight
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(i.c.source, i.c.path, i.c.action).order_by(i.c.source)).all()
        return [Inflight(*row) for row in rows]

    def mark_inflight(self, items: Iterable[Inflight]) -> None:
        rows = [{"source": i.source, "path": i.path, "action": i.action} for i in items]
        if not rows:
            return
        with self._engine.begin() as conn:
            conn.execute(self._upsert(self._t.inflight, ["source"], rows[0].keys()), rows)

    def commit(self, entries: Iterable[tuple[DocRecord, list[ChunkRow]]]) -> None:
        """Record files as ingested with exactly these chunks, and clear them from in-flight (one transaction)."""
        d, c, i = self._t.documents, self._t.chunks, self._t.inflight
        with self._engine.begin() as conn:
            for record, chunks in entries:
                conn.execute(sa.delete(c).where(c.c.source == record.source))
                row = vars(record)
                conn.execute(self._upsert(d, ["source"], row.keys()), [row])
                if chunks:
                    conn.execute(
                        sa.insert(c),
                        [
                            {"chunk_id": k.chunk_id, "source": record.source, "ord": k.ord, "tokens": k.tokens}
                            for k in chunks
                        ],
                    )
                conn.execute(sa.delete(i).where(i.c.source == record.source))

    def touch(self, source: str, path: str, size: int, mtime_ns: int) -> None:
        """Same bytes, new stat (a `touch` or a copy): remember it so the next run skips the hash."""
        d = self._t.documents
        with self._engine.begin() as conn:
            conn.execute(sa.update(d).where(d.c.source == source).values(path=path, size=size, mtime_ns=mtime_ns))

    def remove(self, sources: Iterable[str]) -> None:
        with self._engine.begin() as conn:
            for source in sources:
                for table in (self._t.chunks, self._t.documents, self._t.inflight):
                    conn.execute(sa.delete(table).where(table.c.source == source))

    def manifest_text(self) -> str | None:
        """The stored manifest (JSON), or None before the first ingest wrote one (shared mode)."""
        m = self._t.manifest
        try:
            with self._engine.connect() as conn:
                return conn.execute(sa.select(m.c.body).where(m.c.name == _MANIFEST_ROW)).scalar_one_or_none()
        except sa.exc.OperationalError as exc:  # every retrieval asks: a database outage must read as one
            raise StoreUnavailableError(f"cannot read the index manifest ({exc.orig or exc})") from None

    def save_manifest(self, text: str) -> None:
        with self._engine.begin() as conn:
            conn.execute(
                self._upsert(self._t.manifest, ["name"], ["name", "body"]), [{"name": _MANIFEST_ROW, "body": text}]
            )

    def _upsert(self, table: sa.Table, key: list[str], columns: Iterable[str]) -> Any:
        """INSERT ... ON CONFLICT (key) DO UPDATE: the same API in SQLite and PostgreSQL."""
        insert = (postgresql.insert if self._dialect == "postgresql" else sqlite.insert)(table)
        return insert.on_conflict_do_update(
            index_elements=key, set_={c: insert.excluded[c] for c in columns if c not in key}
        )


def _sqlite_engine(path: Path, readonly: bool) -> sa.Engine:
    """A SQLite file in WAL mode (readers never wait for the writer); read-only opens never create it."""
    if readonly:
        return sa.create_engine(
            sa.URL.create("sqlite", database=f"file:{quote(str(path))}", query={"mode": "ro", "uri": "true"})
        )
    engine = sa.create_engine(sa.URL.create("sqlite", database=str(path)))

    @sa.event.listens_for(engine, "connect")
    def _pragmas(conn: Any, _record: Any) -> None:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")

    return engine
