"""The turn and feedback store, the same tests on both backends: a SQLite file (embedded mode) and
a real PostgreSQL (shared mode), through the one SQLAlchemy code path."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.store import ChatStore, ChatTurn, UnknownTurnError
from chains.results import Source, Timings
from config.settings import sqlalchemy_url
from tests.shared_servers import fresh_database


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ChatStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'nested' / 'app.sqlite'}"
    else:
        url = sqlalchemy_url(fresh_database(request.getfixturevalue("postgres_url")))
    chat_store = ChatStore(url)
    try:
        yield chat_store
    finally:
        chat_store.close()


def turn(turn_id: str, question: str, answer: str = "an answer", *, stopped: bool = False) -> ChatTurn:
    return ChatTurn(
        turn_id=turn_id,
        question=question,
        answer=answer,
        sources=(Source(1, "guide.md", "Guide", None, "Intro", 0, 0.5, "passage", "node-1"),),
        cached=False,
        retrieval_only=False,
        stopped=stopped,
        timings=Timings(ttft_s=0.1, total_s=0.5),
        notices=("a notice",),
        created_at=time.time(),
    )


def test_turns_come_back_in_order_and_a_rerecorded_turn_replaces_the_first(store: ChatStore) -> None:
    store.record_turn("c1", turn("t1", "first question", stopped=True))
    store.record_turn("c1", turn("t2", "second question"))
    store.record_turn("c1", turn("t1", "first question", "the full answer"))

    turns = store.turns("c1")

    assert [(t.turn_id, t.answer, t.stopped) for t in turns] == [
        ("t1", "the full answer", False),
        ("t2", "an answer", False),
    ]
    assert turns[0].sources[0].file == "guide.md" and turns[0].notices == ("a notice",)
    (info,) = store.conversations()
    assert (info.id, info.title, info.turns) == ("c1", "first question", 2)


def test_feedback_is_kept_replaced_exported_and_deleted_with_its_conversation(store: ChatStore) -> None:
    store.record_turn("c1", turn("t1", "q"))
    store.record_feedback("c1", "t1", 1, None)
    store.record_feedback("c1", "t1", -1, "wrong file cited")

    assert store.turns("c1")[0].feedback == -1
    (row,) = store.feedback()
    assert (row["score"], row["comment"], row["sources"]) == (-1, "wrong file cited", ["guide.md"])
    with pytest.raises(UnknownTurnError, match="no turn 'nope'"):
        store.record_feedback("c1", "nope", 1, None)
    with pytest.raises(ValueError, match=r"\+1 or -1"):
        store.record_feedback("c1", "t1", 0, None)

    store.delete_conversation("c1")
    assert store.turns("c1") == [] and store.feedback() == [] and store.conversations() == []
