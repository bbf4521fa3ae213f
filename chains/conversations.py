"""Conversations kept by LangGraph's checkpointer: a conversation id is a thread id.

Embedded mode keeps them in a SQLite file; shared mode in PostgreSQL (LangGraph's Postgres
checkpointer over a connection pool), where every API/UI replica sees every conversation.

The agent graph reads and writes a thread as it runs (the summary memory rewrites it in place);
turns answered without the graph (cache hits, retrieval-only answers) are added here so every
turn is part of the history either way.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
from langchain_core.messages import BaseMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.graph.state import CompiledStateGraph

POOL_SIZE = 8
"""Most PostgreSQL connections one process's conversations use (turns of different conversations run at once)."""

T = TypeVar("T")
SETUP_LOCK_KEY = 0x7261_6763_6861_7401
"""PostgreSQL advisory-lock key under which one process at a time creates the checkpoint tables."""
SETUP_LOCK_WAIT_S = 120.0
"""How long a process waits for another one's table setup (seconds; setup takes well under one)."""
SETUP_LOCK_POLL_S = 0.05


class ConversationStoreError(RuntimeError):
    """The conversations database cannot be opened; nothing in it was changed."""


class ConversationBusyError(ConversationStoreError):
    """Another connection holds the conversations database's lock; nothing was changed, try again."""


class ConversationDamagedError(ConversationStoreError):
    """One conversation's stored state cannot be read; the other conversations are unaffected."""


@asynccontextmanager
async def store_errors(conversation_id: str) -> AsyncIterator[None]:
    """Turn the store's low-level errors inside the block into the two errors a caller can act on.

    Only sqlite errors and undecodable checkpoints (msgpack's ValueError, raised while reading
    state) are translated; anything else passes through unchanged.
    """
    try:
        yield
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc):
            raise
        raise ConversationBusyError(
            f"the conversations database is locked by another connection ({exc}); "
            f"conversation {conversation_id!r} was not changed; try again"
        ) from exc


async def _read(conversation_id: str, reading: Awaitable[T]) -> T:
    """`reading`'s result; a checkpoint that cannot be decoded becomes ConversationDamagedError."""
    async with store_errors(conversation_id):
        try:
            return await reading
        except (ValueError, TypeError, sqlite3.DatabaseError) as exc:
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise
            raise ConversationDamagedError(
                f"conversation {conversation_id!r} is damaged in the conversations database "
                f"({type(exc).__name__}: {exc}); other conversations are unaffected; delete it or start a new one"
            ) from exc


async def open_checkpointer(path: Path) -> AsyncSqliteSaver:
    """The checkpointer over `path` (created if missing); call on the loop that will use it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = aiosqlite.connect(str(path))
    # aiosqlite's worker thread is not a daemon: an agent its owner forgot to close would then
    # keep the interpreter from exiting. Every write is its own SQLite transaction, so nothing
    # is lost when the thread stops with the process.
    connection._thread.daemon = True
    try:
        await connection
        saver = AsyncSqliteSaver(connection)
        await saver.setup()
        await (await connection.execute("SELECT count(*) FROM checkpoints")).fetchone()
    except sqlite3.DatabaseError as exc:
        await connection.close()
        # A failed connect queues aiosqlite's stop without awaiting it: wait for the worker thread,
        # or it outlives this loop and dies on "Event loop is closed" when it reports back.
        await asyncio.to_thread(connection._thread.join, 10)
        raise ConversationStoreError(
            f"conversations database {path} is unreadable ({exc}); move it away to start with no history"
        ) from exc
    return saver


async def open_postgres_checkpointer(url: str) -> BaseCheckpointSaver[Any]:
    """The checkpointer over the PostgreSQL database at `url` (tables created if missing)."""
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    from psycopg import Error as PgError
    from psycopg.rows import dict_row
    from psycopg_pool import AsyncConnectionPool

    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        url,
        min_size=1,
        max_size=POOL_SIZE,
        kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
        open=False,
    )
    try:
        await pool.open(wait=True, timeout=15)
        saver = AsyncPostgresSaver(pool)  # a pool is one of its Conn types: turns of several conversations at once
        # Replicas starting together would run LangGraph's migrations at once ("duplicate key ...
        # checkpoint_migrations_pkey"): one at a time, under a session advisory lock.
        async with pool.connection() as conn:
            await _take_setup_lock(conn)
            try:
                await saver.setup()
            finally:
                await conn.execute("SELECT pg_advisory_unlock(%s)", (SETUP_LOCK_KEY,))
    except (PgError, TimeoutError) as exc:
        await pool.close()
        raise ConversationStoreError(f"cannot open the conversations database in PostgreSQL ({exc})") from exc
    return saver


async def _take_setup_lock(conn: Any) -> None:
    """Poll for the setup lock instead of blocking in `pg_advisory_lock`: the holder's migrations
    run `CREATE INDEX CONCURRENTLY`, which waits for every open statement to end, a waiter's
    blocked lock call included, while that call waits for the holder: an undetected deadlock
    (two replicas starting together hung for good). Short tries end between waits."""
    deadline = time.monotonic() + SETUP_LOCK_WAIT_S
    while True:
        row = await (await conn.execute("SELECT pg_try_advisory_lock(%s) AS got", (SETUP_LOCK_KEY,))).fetchone()
        if row["got"]:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"another process kept the checkpoint tables' setup lock for {SETUP_LOCK_WAIT_S:g} s")
        await asyncio.sleep(SETUP_LOCK_POLL_S)


async def close_checkpointer(saver: BaseCheckpointSaver[Any]) -> None:
    """Close the SQLite connection or the PostgreSQL pool behind a checkpointer."""
    await saver.conn.close()  # type: ignore[attr-defined]  # both savers hold theirs as `conn`


def thread_config(conversation_id: str) -> RunnableConfig:
    return {"configurable": {"thread_id": conversation_id}}


class Conversations:
    """History access for one compiled agent graph."""

    def __init__(self, graph: CompiledStateGraph[Any, Any, Any, Any]) -> None:
        self._graph = graph

    async def messages(self, conversation_id: str) -> list[BaseMessage]:
        """The stored history (a summary message first once the summary memory has run)."""
        state = await _read(conversation_id, self._graph.aget_state(thread_config(conversation_id)))
        return list(state.values.get("messages", []))

    async def record(self, conversation_id: str, *messages: BaseMessage) -> None:
        """Append the messages not stored yet (a failed graph run may have stored the question)
        and close the turn, so the next run starts clean."""
        stored = {m.id for m in await self.messages(conversation_id)}
        missing = [m for m in messages if m.id is None or m.id not in stored]
        if missing:
            async with store_errors(conversation_id):
                await self._graph.aupdate_state(thread_config(conversation_id), {"messages": missing}, as_node="model")

    async def delete(self, conversation_id: str) -> None:
        """Forget a conversation."""
        checkpointer = self._graph.checkpointer
        if isinstance(checkpointer, BaseCheckpointSaver):
            async with store_errors(conversation_id):
                await checkpointer.adelete_thread(conversation_id)
