"""The docstore: one row per ingested file (keyed by document id) with its content hash and chunks.

It is the record of what has been committed. Chroma receives a batch's chunks first; the
docstore row follows in one SQLite transaction, so a kill between the two leaves the file
"in flight" and the next run redoes exactly that file. BM25 and the index version are derived
from here, never from a half-written batch.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    source TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    file_hash TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    file_type TEXT NOT NULL,
    title TEXT,
    chunks INTEGER NOT NULL,
    ingested_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    chunk_id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    ord INTEGER NOT NULL,
    tokens TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_by_source ON chunks(source);
CREATE TABLE IF NOT EXISTS inflight (
    source TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('upsert', 'remove'))
);
"""


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


class DocStore:
    """SQLite in WAL mode: one writer (the ingest holding the lock), readers at any time."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        if readonly:
            self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        else:
            self._db = sqlite3.connect(path, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        self._db.row_factory = sqlite3.Row

    def close(self) -> None:
        self._db.close()

    def records(self) -> dict[str, DocRecord]:
        rows = self._db.execute("SELECT * FROM documents").fetchall()
        return {row["source"]: DocRecord(**dict(row)) for row in rows}

    def counts(self) -> tuple[int, int]:
        docs = self._db.execute("SELECT COUNT(*) FROM documents").fetchone()[0]
        chunks = self._db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
        return int(docs), int(chunks)

    def counts_by_type(self) -> dict[str, tuple[int, int]]:
        rows = self._db.execute("SELECT file_type, COUNT(*), SUM(chunks) FROM documents GROUP BY file_type")
        return {row[0]: (int(row[1]), int(row[2] or 0)) for row in rows}

    def sorted_chunk_ids(self) -> Iterator[str]:
        for row in self._db.execute("SELECT chunk_id FROM chunks ORDER BY chunk_id"):
            yield row[0]

    def chunk_tokens(self) -> Iterator[tuple[str, str]]:
        """(chunk id, tokens) in chunk-id order: the BM25 corpus."""
        for row in self._db.execute("SELECT chunk_id, tokens FROM chunks ORDER BY chunk_id"):
            yield row[0], row[1]

    def inflight(self) -> list[Inflight]:
        rows = self._db.execute("SELECT source, path, action FROM inflight ORDER BY source")
        return [Inflight(*row) for row in rows]

    def mark_inflight(self, items: Iterable[Inflight]) -> None:
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO inflight(source, path, action) VALUES (?, ?, ?)",
                [(i.source, i.path, i.action) for i in items],
            )

    def commit(self, entries: Iterable[tuple[DocRecord, list[ChunkRow]]]) -> None:
        """Record files as ingested with exactly these chunks, and clear them from in-flight."""
        with self._db:
            for record, chunks in entries:
                self._db.execute("DELETE FROM chunks WHERE source = ?", (record.source,))
                self._db.execute(
                    "INSERT OR REPLACE INTO documents VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.source,
                        record.path,
                        record.file_hash,
                        record.size,
                        record.mtime_ns,
                        record.fingerprint,
                        record.file_type,
                        record.title,
                        record.chunks,
                        record.ingested_at,
                    ),
                )
                self._db.executemany(
                    "INSERT INTO chunks(chunk_id, source, ord, tokens) VALUES (?, ?, ?, ?)",
                    [(c.chunk_id, record.source, c.ord, c.tokens) for c in chunks],
                )
                self._db.execute("DELETE FROM inflight WHERE source = ?", (record.source,))

    def touch(self, source: str, path: str, size: int, mtime_ns: int) -> None:
        """Same bytes, new stat (a `touch` or a copy): remember it so the next run skips the hash."""
        with self._db:
            self._db.execute(
                "UPDATE documents SET path = ?, size = ?, mtime_ns = ? WHERE source = ?", (path, size, mtime_ns, source)
            )

    def remove(self, sources: Iterable[str]) -> None:
        with self._db:
            for source in sources:
                self._db.execute("DELETE FROM chunks WHERE source = ?", (source,))
                self._db.execute("DELETE FROM documents WHERE source = ?", (source,))
                self._db.execute("DELETE FROM inflight WHERE source = ?", (source,))
