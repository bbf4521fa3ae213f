"""Per-turn metadata and feedback, so a page reload, a restart or another replica redraws a conversation.

The agent's own conversation store (LangGraph's checkpointer) keeps messages for the model, and
rewrites them into a summary as a conversation grows; it has no sources, badges, timings or
"stopped" marks. This store keeps exactly what a chat page shows, one row per turn.

One code path for both backends through SQLAlchemy: a SQLite file in embedded mode
(`sqlite:///PATH`), PostgreSQL in shared mode (`postgresql+psycopg://...`), where every API/UI
replica reads and writes the same rows.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from app.errors import NotFoundError
from chains.results import Source, Timings
from config.settings import Settings, sqlalchemy_url

_META = sa.MetaData()
_CONVERSATIONS = sa.Table(
    "conversations",
    _META,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)
_TURNS = sa.Table(
    "turns",
    _META,
    sa.Column("conversation_id", sa.Text, sa.ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("turn_id", sa.Text, primary_key=True),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("question", sa.Text, nullable=False),
    sa.Column("answer", sa.Text, nullable=False),
    sa.Column("sources", sa.Text, nullable=False),
    sa.Column("cached", sa.Integer, nullable=False),
    sa.Column("retrieval_only", sa.Integer, nullable=False),
    sa.Column("stopped", sa.Integer, nullable=False),
    sa.Column("timings", sa.Text, nullable=False),
    sa.Column("notices", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)
_FEEDBACK = sa.Table(
    "feedback",
    _META,
    sa.Column("conversation_id", sa.Text, primary_key=True),
    sa.Column("turn_id", sa.Text, primary_key=True),
    sa.Column("score", sa.Integer, sa.CheckConstraint("score IN (-1, 1)"), nullable=False),
    sa.Column("comment", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.ForeignKeyConstraint(
        ["conversation_id", "turn_id"], ["turns.conversation_id", "turns.turn_id"], ondelete="CASCADE"
    ),
)
_CREATE_LOCK_KEY = 0x7261_6763_6861_7402
"""PostgreSQL advisory-lock key under which one process at a time creates the store's tables."""

_JOBS = sa.Table(
    "ingest_jobs",
    _META,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

TITLE_CHARS = 80
MAX_COMMENT_CHARS = 2000


class TurnStoreError(RuntimeError):
    """The turn store could not save a turn (database locked by another writer, or damaged)."""


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
    """The answer ended early: the user stopped it, or the model server failed midway (`notices`
    say which); `answer` is what had arrived."""
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


def store_url(settings: Settings) -> str:
    """The SQLAlchemy URL of the turn store: PostgreSQL in shared mode, else `api.store_db`."""
    if settings.state.mode == "shared" and settings.state.postgres_url is not None:
        return sqlalchemy_url(settings.state.postgres_url.get_secret_value())
    return f"sqlite:///{settings.api.store_db}"


class ChatStore:
    """Thread-safe (SQLAlchemy's connection pool): the UI and the API share it within a process,
    and in shared mode replicas share its rows."""

    def __init__(self, url: str) -> None:
        self._engine = sa.create_engine(url)
        self._dialect = self._engine.dialect.name
        if self._dialect == "sqlite":
            database = self._engine.url.database
            if database:
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            sa.event.listen(self._engine, "connect", _sqlite_pragmas)
            sa.event.listen(self._engine, "begin", _sqlite_begin)
        with self._engine.begin() as conn:
            if self._dialect == "postgresql":
                # Replicas starting together would both create the tables ("relation already
                # exists"): one at a time, under a transaction-scoped advisory lock.
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CREATE_LOCK_KEY})
            _META.create_all(conn)

    def close(self) -> None:
        self._engine.dispose()

    def record_turn(self, conversation_id: str, turn: ChatTurn) -> None:
        """Store a turn (a second record of the same turn id replaces the first)."""
        now = time.time()
        row = {
            "conversation_id": conversation_id,
            "turn_id": turn.turn_id,
            "question": turn.question,
            "answer": turn.answer,
            "sources": json.dumps([s.to_dict() for s in turn.sources]),
            "cached": int(turn.cached),
            "retrieval_only": int(turn.retrieval_only),
            "stopped": int(turn.stopped),
            "timings": json.dumps(dataclasses.asdict(turn.timings)),
            "notices": json.dumps(list(turn.notices)),
            "created_at": turn.created_at,
        }
        # No other writer between reading seq and writing it: SQLite takes the write lock at BEGIN
        # IMMEDIATE; PostgreSQL's upsert locks the conversation row until the commit.
        try:
            with self._engine.connect().execution_options(immediate=True) as conn, conn.begin():
                conversation = self._insert(_CONVERSATIONS).values(
                    id=conversation_id, title=_title(turn.question), created_at=now, updated_at=now
                )
                conn.execute(
                    conversation.on_conflict_do_update(
                        index_elements=["id"], set_={"updated_at": conversation.excluded.updated_at}
                    )
                )
                seq = conn.execute(
                    sa.select(sa.func.coalesce(sa.func.max(_TURNS.c.seq), 0) + 1).where(
                        _TURNS.c.conversation_id == conversation_id
                    )
                ).scalar_one()
                insert = self._insert(_TURNS).values(seq=seq, **row)
                replaced = {k: insert.excluded[k] for k in row if k not in ("conversation_id", "turn_id")}
                conn.execute(insert.on_conflict_do_update(index_elements=["conversation_id", "turn_id"], set_=replaced))
        except sa.exc.DatabaseError as exc:  # locked by another writer past the busy timeout, or damaged
            raise TurnStoreError(f"the turn could not be saved to the history ({exc.orig})") from exc

    def turns(self, conversation_id: str) -> list[ChatTurn]:
        t, f = _TURNS, _FEEDBACK
        query = (
            sa.select(t, f.c.score)
            .outerjoin(f, sa.and_(f.c.conversation_id == t.c.conversation_id, f.c.turn_id == t.c.turn_id))
            .where(t.c.conversation_id == conversation_id)
            .order_by(t.c.seq)
        )
        with self._engine.connect() as conn:
            return [_turn(row) for row in conn.execute(query)]

    def conversations(self) -> list[ConversationInfo]:
        c, t = _CONVERSATIONS, _TURNS
        query = (
            sa.select(c.c.id, c.c.title, c.c.updated_at, sa.func.count(t.c.turn_id))
            .outerjoin(t, t.c.conversation_id == c.c.id)
            .group_by(c.c.id)
            .order_by(c.c.updated_at.desc())
        )
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [ConversationInfo(id=r[0], title=r[1], updated_at=r[2], turns=r[3]) for r in rows]

    def delete_conversation(self, conversation_id: str) -> None:
        with self._engine.begin() as conn:
            conn.execute(sa.delete(_CONVERSATIONS).where(_CONVERSATIONS.c.id == conversation_id))

    def record_feedback(self, conversation_id: str, turn_id: str, score: int, comment: str | None) -> None:
        if score not in (1, -1):
            raise ValueError(f"feedback score must be +1 or -1, not {score!r}")
        if comment is not None and len(comment) > MAX_COMMENT_CHARS:
            raise ValueError(f"feedback comment is {len(comment)} characters; at most {MAX_COMMENT_CHARS}")
        t = _TURNS
        with self._engine.begin() as conn:
            known = conn.execute(
                sa.select(sa.literal(1)).where(t.c.conversation_id == conversation_id, t.c.turn_id == turn_id)
            ).first()
            if known is None:
                raise UnknownTurnError(f"no turn {turn_id!r} in conversation {conversation_id!r}")
            values = {"score": score, "comment": comment, "created_at": time.time()}
            insert = self._insert(_FEEDBACK).values(conversation_id=conversation_id, turn_id=turn_id, **values)
            conn.execute(
                insert.on_conflict_do_update(
                    index_elements=["conversation_id", "turn_id"], set_={k: insert.excluded[k] for k in values}
                )
            )

    def feedback(self) -> list[dict[str, Any]]:
        """Every rating with its turn: what an export holds."""
        t, f = _TURNS, _FEEDBACK
        query = (
            sa.select(
                f.c.conversation_id,
                f.c.turn_id,
                f.c.score,
                f.c.comment,
                f.c.created_at,
                t.c.question,
                t.c.answer,
                t.c.sources,
                t.c.cached,
                t.c.retrieval_only,
                t.c.stopped,
            )
            .join(t, sa.and_(f.c.conversation_id == t.c.conversation_id, f.c.turn_id == t.c.turn_id))
            .order_by(f.c.created_at)
        )
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
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

    def save_job(self, job_id: str, state: str, body: dict[str, Any], created_at: float) -> None:
        """Store an ingest job's latest snapshot (JSON), so any replica can answer for it."""
        values = {"state": state, "body": json.dumps(body), "created_at": created_at}
        insert = self._insert(_JOBS).values(id=job_id, **values)
        with self._engine.begin() as conn:
            conn.execute(
                insert.on_conflict_do_update(index_elements=["id"], set_={k: insert.excluded[k] for k in values})
            )

    def load_job(self, job_id: str) -> dict[str, Any] | None:
        with self._engine.connect() as conn:
            body = conn.execute(sa.select(_JOBS.c.body).where(_JOBS.c.id == job_id)).scalar_one_or_none()
        return None if body is None else dict(json.loads(body))

    def prune_jobs(self, keep: int, finished: Sequence[str]) -> None:
        """Delete all but the `keep` newest jobs in a `finished` state."""
        j = _JOBS
        newest = sa.select(j.c.id).where(j.c.state.in_(finished)).order_by(j.c.created_at.desc()).limit(keep)
        with self._engine.begin() as conn:
            conn.execute(sa.delete(j).where(j.c.state.in_(finished), j.c.id.not_in(newest.scalar_subquery())))

    def _insert(self, table: sa.Table) -> Any:
        """The dialect's INSERT, which has `on_conflict_do_update` (same API in SQLite and PostgreSQL)."""
        return (postgresql.insert if self._dialect == "postgresql" else sqlite.insert)(table)


def _sqlite_pragmas(conn: Any, _record: Any) -> None:
    """WAL (readers never wait for the writer), enforced foreign keys, and transactions begun by
    `_sqlite_begin` rather than pysqlite's implicit BEGIN (SQLAlchemy's documented recipe)."""
    conn.isolation_level = None
    cursor = conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin(conn: sa.Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("immediate") else "BEGIN")


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
