"""Conversations in PostgreSQL (shared mode): replicas that start together set up LangGraph's
checkpoint tables one at a time without hanging each other. Real PostgreSQL (Debian's, loopback)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from chains.conversations import SETUP_LOCK_KEY, close_checkpointer, open_postgres_checkpointer
from tests.shared_servers import fresh_database

pytestmark = [pytest.mark.integration]


async def open_and_close(url: str) -> None:
    await close_checkpointer(await open_postgres_checkpointer(url))


def test_waiting_for_the_setup_lock_does_not_stall_the_holders_concurrent_index(postgres_url: str) -> None:
    """The lock holder's migrations run `CREATE INDEX CONCURRENTLY`, which waits for every running
    statement to end: a process blocked inside `pg_advisory_lock` never would (two replicas starting
    together hung that way). Here the test holds the lock while a checkpointer opens, and the
    test's own concurrent index build must still finish; once the lock is freed the checkpointer opens."""
    url = fresh_database(postgres_url)
    with psycopg.connect(url, autocommit=True) as holder, psycopg.connect(url, autocommit=True) as builder:
        holder.execute("SELECT pg_advisory_lock(%s)", (SETUP_LOCK_KEY,))
        builder.execute("CREATE TABLE probe (x int)")
        with ThreadPoolExecutor(1) as pool:
            opening = pool.submit(asyncio.run, open_and_close(url))
            try:
                deadline = time.monotonic() + 60
                while not waiting_for_the_lock(builder, holder.info.backend_pid):
                    assert not opening.done(), opening.result()
                    assert time.monotonic() < deadline, "the checkpointer never asked for the setup lock"
                    time.sleep(0.05)
                builder.execute("SET statement_timeout = '20s'")
                try:
                    builder.execute("CREATE INDEX CONCURRENTLY probe_x ON probe (x)")
                except psycopg.errors.QueryCanceled:
                    pytest.fail("CREATE INDEX CONCURRENTLY waited 20 s for the process waiting on the setup lock")
                assert not opening.done(), "the checkpointer set up its tables while another process held the lock"
            finally:
                holder.execute("SELECT pg_advisory_unlock(%s)", (SETUP_LOCK_KEY,))
            opening.result(timeout=120)
        tables = builder.execute("SELECT count(*) FROM pg_tables WHERE tablename = 'checkpoints'").fetchone()
    assert tables == (1,)


def waiting_for_the_lock(conn: psycopg.Connection[tuple[object, ...]], holder_pid: int) -> bool:
    """Has another session (the checkpointer's) asked for the setup lock yet?"""
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid NOT IN (pg_backend_pid(), %s) AND query LIKE '%%advisory_lock(%%'",
        (holder_pid,),
    ).fetchone()
    return bool(row and row[0])
