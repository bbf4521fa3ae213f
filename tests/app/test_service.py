"""ChatService on its own: history that survives a restart (sources, badges, stopped marks),
feedback and its export, bad input. Real index, cache, store and engine."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from llm_server import LLMServer
from tcp_proxy import TcpProxy

from app.service import ChatService
from app.store import UnknownTurnError
from chains import QuestionError, TurnResult
from config import load_settings
from config.settings import Settings

pytestmark = [pytest.mark.integration]


@pytest.fixture
def own_settings(api_settings: Settings, tmp_path: Path) -> Settings:
    """The API test index, with this test's own conversations, cache and turn store."""
    return load_settings(
        "test",
        index=api_settings.index.model_dump(),
        llm={**api_settings.llm.model_dump(), "max_tokens": 24},
        chains={"conversations_db": tmp_path / "conversations.sqlite"},
        cache={"dir": tmp_path / "cache"},
        api={"store_db": tmp_path / "app.sqlite"},
    )


def answer(service: ChatService, question: str, conversation_id: str, **kwargs: Any) -> TurnResult:
    pieces = list(service.stream(question, conversation_id, **kwargs))
    assert isinstance(pieces[-1], TurnResult)
    return pieces[-1]


def test_history_survives_a_restart_with_sources_badges_and_stopped_marks(own_settings: Settings) -> None:
    seen: list[Any] = []
    with ChatService.from_settings(own_settings) as service:
        first = answer(service, "How do I add my own documents?", "restart-0", on_sources=seen.append)
        assert seen and set(first.sources) <= set(seen[0]), "on_sources saw the passages before the text"
        again = answer(service, "How do I add my own documents?", "restart-1")
        assert again.cached, "the same question, in a new conversation, is answered from the semantic cache"
        stream = service.stream("Which formats can it read?", "restart-1", turn_id="stopped-turn")
        next(stream)
        stream.close()  # the user pressed Stop after the first piece
    with ChatService.from_settings(own_settings) as service:
        (turn,) = service.history("restart-0")
        assert turn.answer == first.answer and turn.sources == first.sources and not turn.cached
        assert turn.timings.total_s > 0
        cached, stopped = service.history("restart-1")
        assert cached.cached and not cached.stopped and cached.sources == again.sources
        assert stopped.stopped and stopped.turn_id == "stopped-turn" and stopped.answer and stopped.sources
        assert stopped.timings.ttft_s is not None
        assert [(c.id, c.turns) for c in service.conversations()] == [("restart-1", 2), ("restart-0", 1)]
        assert service.conversations()[1].title == "How do I add my own documents?"
        service.delete_conversation("restart-1")
        assert service.history("restart-1") == [] and [c.id for c in service.conversations()] == ["restart-0"]


def test_feedback_is_stored_exported_and_checked(own_settings: Settings, tmp_path: Path) -> None:
    with ChatService.from_settings(own_settings) as service:
        answer(service, "What is the python API?", "fb-1", turn_id="t1")
        service.record_feedback("fb-1", "t1", -1, "wrong file cited")
        service.record_feedback("fb-1", "t1", 1)  # a second rating replaces the first
        assert service.history("fb-1")[0].feedback == 1
        with pytest.raises(ValueError, match=r"\+1 or -1"):
            service.record_feedback("fb-1", "t1", 5)
        with pytest.raises(UnknownTurnError, match="no turn 'nope'"):
            service.record_feedback("fb-1", "nope", 1)
        rows = service.export_feedback(tmp_path / "feedback.csv")
        assert [(r["turn_id"], r["score"], r["question"]) for r in rows] == [("t1", 1, "What is the python API?")]
        with (tmp_path / "feedback.csv").open(encoding="utf-8") as fh:
            assert [r["turn_id"] for r in csv.DictReader(fh)] == ["t1"]
        service.export_feedback(tmp_path / "feedback.jsonl")
        lines = (tmp_path / "feedback.jsonl").read_text(encoding="utf-8").splitlines()
        assert json.loads(lines[0])["sources"] == rows[0]["sources"]
        with pytest.raises(ValueError, match=r"\.csv or \.jsonl"):
            service.export_feedback(tmp_path / "feedback.xlsx")


def test_bad_turn_options_are_refused_before_anything_runs(own_settings: Settings) -> None:
    with ChatService.from_settings(own_settings) as service:
        for kwargs, message in [
            ({"max_tokens": 0}, "max_tokens"),
            ({"temperature": 3.0}, "temperature"),
            ({"top_k": 0}, "top_k"),
            ({"turn_id": "../x"}, "invalid"),
        ]:
            with pytest.raises(QuestionError, match=message):
                next(service.stream("hello", "bad-1", **kwargs))
        with pytest.raises(QuestionError, match="empty"):
            next(service.stream("  ", "bad-1"))
        assert service.history("bad-1") == []


def test_closing_a_stream_stops_the_model_request(own_settings: Settings, vllm_server: LLMServer) -> None:
    """The UI's Stop button closes the sync stream: the model connection is cut mid-answer."""
    engine = urlsplit(vllm_server.base_url)
    proxy = TcpProxy(str(engine.hostname), int(engine.port or 80))
    llm = {**own_settings.llm.model_dump(), "base_url": f"http://127.0.0.1:{proxy.port}/v1", "max_tokens": 1200}
    settings = load_settings("test", **{**own_settings.model_dump(exclude={"profile", "llm"}), "llm": llm})
    try:
        with ChatService.from_settings(settings) as service:
            stream = service.stream("Tell me everything about uploads.", "stop-1")
            next(stream)
            stream.close()
            (call,) = [c for c in proxy.connections if b"chat.completion.chunk" in c.upstream_bytes]
            assert call.finished.wait(30) and call.closed_by_client and not call.saw_done
            (turn,) = service.history("stop-1")
            assert turn.stopped
    finally:
        proxy.close()
