"""Per-turn metadata and feedback in SQLite, so a page reload or a restart redraws a conversation.

The agent's own conversation store (LangGraph's checkpointer) keeps messages for the model, and
rewrites them into a summary as a conversation grows; it has no sources, badges, timings or
"stopped" marks. This store keeps exactly what a chat page shows, one row per turn.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

from app.errors import NotFoundError
from chains.results import Source, Timings

_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS turns (
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    turn_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    question TEXT NOT NULL,
    answer TEXT NOT NULL,
    sources TEXT NOT NULL,
    cached INTEGER NOT NULL,
    retrieval_only INTEGER NOT NULL,
    stopped INTEGER NOT NULL,
    timings TEXT NOT NULL,
    notices TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (conversation_id, turn_id)
);
CREATE TABLE IF NOT EXISTS feedback (
    conversation_id TEXT NOT NULL,
    turn_id TEXT NOT NULL,
    score INTEGER NOT NULL CHECK (score IN (-1, 1)),
    comment TEXT,
    created_at REAL NOT NULL,
    PRIMARY KEY (conversation_id, turn_id),
    FOREIGN KEY (conversation_id, turn_id) REFERENCES turns(conversation_id, turn_id) ON DELETE CASCADE
);
"""

TITLE_CHARS = 80
MAX_COMMENT_CHARS = 2000


class UnknownTurnError(NotFoundError):
    """No such conversation or turn."""


@dataclass(frozen=True)
class ChatTurn:
    """One turn as a chat page draws it."""

    turn_id: str
    question: str
    answer: str
    sources: tuple[Source, ...]
    cached: bool
    retrieval_only: bool
    stopped: bool
    """The user stopped the answer; `answer` is what had arrived."""
    timings: Timings
    notices: tuple[str, ...]
    created_at: float
    feedback: int | None = None
    """+1 / -1 when the user rated the answer."""


@dataclass(frozen=True)
class ConversationInfo:
    id: str
    title: str
    """The first question, shortened."""
    updated_at: float
    turns: int


class ChatStore:
    """Thread-safe (one connection, one lock): the UI and the API share it within a process."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def record_turn(self, conversation_id: str, turn: ChatTurn) -> None:
        """Store a turn (a second record of the same turn id replaces the first)."""
        now = time.time()
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO conversations(id, title, created_at, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET updated_at = excluded.updated_at",
                (conversation_id, _title(turn.question), now, now),
            )
            seq = self._db.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM turns WHERE conversation_id = ?", (conversation_id,)
            ).fetchone()[0]
            self._db.execute(
                "INSERT OR REPLACE INTO turns VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    conversation_id,
                    turn.turn_id,
                    seq,
                    turn.question,
                    turn.answer,
                    json.dumps([s.to_dict() for s in turn.sources]),
                    int(turn.cached),
                    int(turn.retrieval_only),
                    int(turn.stopped),
                    json.dumps(dataclasses.asdict(turn.timings)),
                    json.dumps(list(turn.notices)),
                    turn.created_at,
                ),
            )

    def turns(self, conversation_id: str) -> list[ChatTurn]:
        with self._lock:
            rows = self._db.execute(
                "SELECT t.*, f.score FROM turns t LEFT JOIN feedback f "
                "ON f.conversation_id = t.conversation_id AND f.turn_id = t.turn_id "
                "WHERE t.conversation_id = ? ORDER BY t.seq",
                (conversation_id,),
            ).fetchall()
        return [_turn(row) for row in rows]

    def conversations(self) -> list[ConversationInfo]:
        with self._lock:
            rows = self._db.execute(
                "SELECT c.id, c.title, c.updated_at, COUNT(t.turn_id) FROM conversations c "
                "LEFT JOIN turns t ON t.conversation_id = c.id GROUP BY c.id ORDER BY c.updated_at DESC"
            ).fetchall()
        return [ConversationInfo(id=r[0], title=r[1], updated_at=r[2], turns=r[3]) for r in rows]

    def delete_conversation(self, conversation_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    def record_feedback(self, conversation_id: str, turn_id: str, score: int, comment: str | None) -> None:
        if score not in (1, -1):
            raise ValueError(f"feedback score must be +1 or -1, not {score!r}")
        if comment is not None and len(comment) > MAX_COMMENT_CHARS:
            raise ValueError(f"feedback comment is {len(comment)} characters; at most {MAX_COMMENT_CHARS}")
        with self._lock:
            known = self._db.execute(
                "SELECT 1 FROM turns WHERE conversation_id = ? AND turn_id = ?", (conversation_id, turn_id)
            ).fetchone()
            if known is None:
                raise UnknownTurnError(f"no turn {turn_id!r} in conversation {conversation_id!r}")
            self._db.execute(
                "INSERT OR REPLACE INTO feedback VALUES (?, ?, ?, ?, ?)",
                (conversation_id, turn_id, score, comment, time.time()),
            )

    def feedback(self) -> list[dict[str, Any]]:
        """Every rating with its turn: what an export holds."""
        with self._lock:
            rows = self._db.execute(
                "SELECT f.conversation_id, f.turn_id, f.score, f.comment, f.created_at, t.question, t.answer, "
                "t.sources, t.cached, t.retrieval_only, t.stopped FROM feedback f JOIN turns t "
                "ON f.conversation_id = t.conversation_id AND f.turn_id = t.turn_id ORDER BY f.created_at"
            ).fetchall()
        return [
            {
                "conversation_id": r[0],
                "turn_id": r[1],
                "score": r[2],
                "comment": r[3],
                "rated_at": r[4],
                "question": r[5],
                "answer": r[6],
                "sources": sorted({s["file"] for s in json.loads(r[7])}),
                "cached": bool(r[8]),
                "retrieval_only": bool(r[9]),
                "stopped": bool(r[10]),
            }
            for r in rows
        ]


ExportFormat = Literal["csv", "jsonl"]


def write_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """CSV or JSON Lines, chosen by the file's extension."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise ValueError(f"export file must end in .csv or .jsonl, not {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as fh:
        _write_rows(fh, rows, "csv" if suffix == ".csv" else "jsonl")


def format_rows(rows: Sequence[dict[str, Any]], export_format: ExportFormat) -> str:
    """The rows as CSV or JSON Lines text (what the API's export returns)."""
    buffer = io.StringIO(newline="")
    _write_rows(buffer, rows, export_format)
    return buffer.getvalue()


def _write_rows(fh: TextIO, rows: Sequence[dict[str, Any]], export_format: ExportFormat) -> None:
    if export_format == "jsonl":
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        return
    fields = list(rows[0]) if rows else ["conversation_id", "turn_id", "score", "comment"]
    writer = csv.DictWriter(fh, fieldnames=fields)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "; ".join(v) if isinstance(v, list) else v for k, v in row.items()})


def _title(question: str) -> str:
    flat = " ".join(question.split())
    return flat if len(flat) <= TITLE_CHARS else flat[: TITLE_CHARS - 1].rstrip() + "…"


def _turn(row: Sequence[Any]) -> ChatTurn:
    (_, turn_id, _, question, answer, sources, cached, retrieval_only, stopped, timings, notices, created, score) = row
    return ChatTurn(
        turn_id=turn_id,
        question=question,
        answer=answer,
        sources=tuple(Source.from_dict(s) for s in json.loads(sources)),
        cached=bool(cached),
        retrieval_only=bool(retrieval_only),
        stopped=bool(stopped),
        timings=Timings(**json.loads(timings)),
        notices=tuple(json.loads(notices)),
        created_at=created,
        feedback=score,
    )
