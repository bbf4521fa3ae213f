"""The stores fail while the agent serves: the semantic cache's store deleted, truncated or locked,
the conversations database damaged or locked. Real GPTCache (sqlite + faiss), real LangGraph
SQLite checkpointer, real index, real engine (tiny model: answers are noise, so the tests check
what is stored and served, never wording)."""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from chains import RagAgent, TurnResult
from chains.conversations import ConversationDamagedError
from config.settings import Settings
from tests.app.api_server import start_api
from tests.reliability.conftest import SettingsFactory

pytestmark = [pytest.mark.integration]

QUESTIONS = ["How do I add my own documents?", "What does the HTTP API offer?", "Which file formats are read?"]


@pytest.fixture
def cached_settings(make_settings: SettingsFactory) -> Settings:
    return make_settings(cache={"enabled": True}, llm={"max_tokens": 8})


@pytest.fixture
def agent(cached_settings: Settings) -> Iterator[RagAgent]:
    with RagAgent.from_settings(cached_settings) as running:
        yield running


def _answered(result: TurnResult) -> None:
    """The model answered (not the cache, not the retrieval-only fallback)."""
    assert not result.cached and not result.retrieval_only and result.error is None and result.answer


def _store_files(cache_dir: Path) -> list[Path]:
    return [p for p in (cache_dir / "scopes").glob("*/*") if p.name.startswith(("sqlite.db", "faiss.index"))]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("fault", ["deleted", "truncated", "locked"])
def test_cache_store_fault_answers_uncached_warns_once_and_recovers(
    agent: RagAgent, cached_settings: Settings, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    first, again = QUESTIONS[0], QUESTIONS[1]
    _answered(agent.invoke(first, "c1"))
    hit = agent.invoke(first, "c2")
    assert hit.cached
    cache_dir = Path(cached_settings.cache.dir)
    files = _store_files(cache_dir)
    assert any(p.name == "sqlite.db" for p in files)

    holder: sqlite3.Connection | None = None
    if fault == "deleted":  # e.g. an operator's `rm -rf data/cache` while the API runs
        shutil.rmtree(cache_dir / "scopes")
    elif fault == "truncated":
        for path in files:
            with path.open("r+b") as fh:
                fh.truncate(0)
    else:  # another process holds the store's write lock
        (db,) = (p for p in files if p.name == "sqlite.db")
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")

    with caplog.at_level(logging.WARNING, logger="chains.cache"):
        during = [agent.invoke(first, "c3"), agent.invoke(again, "c4")]
    for result in during:
        _answered(result)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "semantic cache" in warnings[0], warnings
    assert first not in warnings[0] and again not in warnings[0], "questions stay out of the logs"

    if holder is not None:
        holder.rollback()
        holder.close()
        assert agent.invoke(first, "c5").cached, "a locked store is kept: its answers are served again"
    later = QUESTIONS[2]
    _answered(agent.invoke(later, "c6"))
    assert agent.invoke(later, "c7").cached, "the cache stores and serves again"
    stats = agent.cache_stats()
    assert stats is not None and stats.entries >= 1


def _conversation_ids(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {row[0] for row in conn.execute("SELECT DISTINCT thread_id FROM checkpoints")}


@pytest.mark.timeout(180)
def test_damaged_conversation_fails_alone_with_a_clear_error(make_settings: SettingsFactory) -> None:
    settings = make_settings(cache={"enabled": False}, llm={"max_tokens": 8})
    db = Path(settings.chains.conversations_db)
    with RagAgent.from_settings(settings) as agent:
        for cid in ("damaged", "healthy"):
            _answered(agent.invoke(QUESTIONS[0], cid))
        healthy_before = [m.text for m in agent.history("healthy")]
        with sqlite3.connect(db) as conn:  # garbage over one conversation's stored state
            conn.execute("UPDATE checkpoints SET checkpoint = X'DEADBEEF00FF' WHERE thread_id = 'damaged'")

        with pytest.raises(ConversationDamagedError, match="conversation 'damaged' is damaged") as damaged:
            agent.invoke(QUESTIONS[1], "damaged")
        assert "other conversations are unaffected" in str(damaged.value)
        with pytest.raises(ConversationDamagedError):
            agent.history("damaged")

        assert [m.text for m in agent.history("healthy")] == healthy_before
        _answered(agent.invoke(QUESTIONS[1], "healthy"))
        assert len(agent.history("healthy")) == len(healthy_before) + 2
        _answered(agent.invoke(QUESTIONS[1], "new-one"))

    from app.api import create_app
    from app.service import ChatService

    with ChatService.from_settings(settings) as service:  # the same through the API: a 409 for that one only
        api = start_api(create_app(settings, service))
        try:
            refused = _ask(api.base_url, "damaged", QUESTIONS[2])
            assert refused.status_code == 409, refused.text
            assert refused.json()["error"]["type"] == "conversation_damaged"
            assert _ask(api.base_url, "healthy", QUESTIONS[2]).status_code == 200
            service.delete_conversation("damaged")  # the way out the error names
            assert _ask(api.base_url, "damaged", QUESTIONS[2]).status_code == 200
        finally:
            api.stop()
    assert _conversation_ids(db) == {"damaged", "healthy", "new-one"}


def _ask(base_url: str, cid: str, question: str) -> httpx.Response:
    return httpx.post(
        f"{base_url}/chat/completions",
        json={"messages": [{"role": "user", "content": question}]},
        headers={"X-Conversation-Id": cid},
        timeout=120,
    )


@pytest.mark.timeout(180)
def test_locked_conversations_database_is_a_clear_503_and_loses_nothing(make_settings: SettingsFactory) -> None:
    from app.api import create_app
    from app.service import ChatService

    settings = make_settings(cache={"enabled": False}, llm={"max_tokens": 8})
    db = Path(settings.chains.conversations_db)
    with ChatService.from_settings(settings) as service:
        api = start_api(create_app(settings, service))
        try:
            for cid in ("first", "second"):
                assert _ask(api.base_url, cid, QUESTIONS[0]).status_code == 200
            holder = sqlite3.connect(db, isolation_level=None)
            holder.execute("BEGIN EXCLUSIVE")  # another process writes the database and does not let go
            try:
                refused = _ask(api.base_url, "first", QUESTIONS[1])
            finally:
                holder.rollback()
                holder.close()
            assert refused.status_code == 503, refused.text
            error = refused.json()["error"]
            assert error["type"] == "conversation_store_busy" and "is locked" in error["message"]
            assert "try again" in error["message"]

            for cid in ("first", "second"):  # released: both go on, with their history intact
                assert _ask(api.base_url, cid, QUESTIONS[1]).status_code == 200
                assert len(service.history(cid)) == 2
        finally:
            api.stop()
    with RagAgent.from_settings(settings) as agent:  # the model's memory of both: two full turns each
        assert [len(agent.history(cid)) for cid in ("first", "second")] == [4, 4]


@pytest.mark.timeout(240)
def test_locked_turn_store_serves_the_answer_with_a_notice_and_loses_nothing(make_settings: SettingsFactory) -> None:
    """The turn store (`api.store_db`: what the UI redraws and the API lists) locked by another
    writer: the answer was made and the agent remembers it, so it is served, saying it was not saved
    (it was a 500, or a stream that ended with no result and no word); other turns stay."""
    from app.api import create_app
    from app.service import ChatService

    settings = make_settings(cache={"enabled": False}, llm={"max_tokens": 8})
    with ChatService.from_settings(settings) as service:
        api = start_api(create_app(settings, service))
        try:
            assert _ask(api.base_url, "kept", QUESTIONS[0]).status_code == 200
            holder = sqlite3.connect(settings.api.store_db, isolation_level=None)
            holder.execute("BEGIN EXCLUSIVE")  # another process writes the store and does not let go
            try:
                plain = _ask(api.base_url, "unsaved", QUESTIONS[1])
                with httpx.stream(
                    "POST",
                    f"{api.base_url}/chat/completions",
                    json={"messages": [{"role": "user", "content": QUESTIONS[2]}], "stream": True},
                    headers={"X-Conversation-Id": "unsaved-stream"},
                    timeout=120,
                ) as response:
                    assert response.status_code == 200
                    events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
            finally:
                holder.rollback()
                holder.close()
            assert plain.status_code == 200, plain.text
            final = events[-1]
            for result in (plain.json(), final):
                assert not result["retrieval_only"] and result["sources"]
                (notice,) = [n for n in result["notices"] if "could not be saved" in n]
                assert "database is locked" in notice and "reopened" in notice
            assert plain.json()["choices"][0]["message"]["content"]
            assert "error" not in final and final["choices"][0]["finish_reason"] == "stop"

            assert _ask(api.base_url, "unsaved", QUESTIONS[0]).status_code == 200  # released: saved again
            assert [len(service.history(c)) for c in ("kept", "unsaved", "unsaved-stream")] == [1, 1, 0]
        finally:
            api.stop()
    with RagAgent.from_settings(settings) as agent:  # the model's memory kept every turn
        assert [len(agent.history(c)) for c in ("kept", "unsaved", "unsaved-stream")] == [2, 4, 2]
