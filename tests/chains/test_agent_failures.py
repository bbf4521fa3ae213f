"""Failure behaviour against real sockets: a closed port, a server that never answers, and a
corrupt cache store. None of these needs the vLLM server."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chains import RagAgent, TurnResult
from chains.cache import SemanticCache
from config.settings import Settings
from tests.chains.scripted_model import ScriptedChatModel

QUESTION = "What does the X200 warranty cover?"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server that accepts connections and never sends a byte."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


def _settings(unit_settings: Settings, port: int, timeout_s: float, retries: int = 0) -> Settings:
    settings = unit_settings.model_copy(deep=True)
    settings.llm.base_url = f"http://127.0.0.1:{port}/v1"
    settings.llm.request_timeout_s = timeout_s
    settings.llm.max_retries = retries
    return settings


def _timed_invoke(agent: RagAgent, question: str, cid: str) -> tuple[TurnResult, float]:
    start = time.perf_counter()
    result = agent.invoke(question, cid)
    return result, time.perf_counter() - start


@pytest.mark.parametrize("retries", [0, 1])
def test_closed_port_gives_a_retrieval_only_answer_within_the_timeout(
    unit_settings: Settings, retriever: Any, retries: int
) -> None:
    settings = _settings(unit_settings, _closed_port(), timeout_s=10, retries=retries)
    with RagAgent.from_settings(settings, retriever=retriever) as agent:
        result, elapsed = _timed_invoke(agent, QUESTION, "dead")
    assert result.retrieval_only and result.error is not None
    assert "cannot reach the model server at http://127.0.0.1:" in result.error
    assert result.sources and "[1] " in result.answer
    assert elapsed < settings.llm.request_timeout_s


def test_silent_server_times_out_within_the_configured_timeout(
    unit_settings: Settings, retriever: Any, silent_server: int
) -> None:
    settings = _settings(unit_settings, silent_server, timeout_s=2, retries=1)
    with RagAgent.from_settings(settings, retriever=retriever) as agent:
        pieces = list(agent.stream(QUESTION, "hang"))
    result = pieces[-1]
    assert isinstance(result, TurnResult) and result.retrieval_only
    assert result.error is not None and ("sent nothing for 2 s" in result.error or "timed out" in result.error)
    # One timeout, not one per retry: the turn's own deadline cuts the retries short.
    assert result.timings.total_s < 2 * settings.llm.request_timeout_s
    assert pieces[:-1] == [result.answer]


def test_follow_up_on_a_silent_server_waits_for_one_timeout_only(
    unit_settings: Settings, retriever: Any, silent_server: int
) -> None:
    with RagAgent(
        unit_settings, retriever=retriever, chat_model=ScriptedChatModel(script=["Two years [1]."]), cache=None
    ) as agent:
        agent.invoke(QUESTION, "hang2")
    settings = _settings(unit_settings, silent_server, timeout_s=2)
    with RagAgent.from_settings(settings, retriever=retriever) as agent:
        result, _ = _timed_invoke(agent, "and the battery?", "hang2")
        assert len(agent.history("hang2")) == 4
    assert result.retrieval_only
    assert any("follow-up not rewritten" in n for n in result.notices)
    assert result.standalone_question == "and the battery?"
    assert result.timings.total_s < 2 * settings.llm.request_timeout_s


def test_corrupt_cache_store_answers_uncached_warns_once_and_rebuilds(
    unit_settings: Settings, retriever: Any, embed_model: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings = unit_settings.model_copy(deep=True)
    settings.cache.enabled = True
    cache = SemanticCache.from_settings(
        settings.cache,
        settings.index.embed_model,
        settings.index.embed_batch_size,
        embed_backend=settings.index.embed_backend,
    )
    model = ScriptedChatModel(script=["First [1].", "Second [1]."])
    with RagAgent(settings, retriever=retriever, chat_model=model, cache=cache) as agent:
        first = agent.invoke(QUESTION, "k1")
        assert not first.cached and agent.invoke(QUESTION, "k2").cached
        cache.close()  # release the files, as a crash would, then damage them
        for path in Path(settings.cache.dir).rglob("*"):
            if path.is_file() and path.suffix in {".db", ".index"}:
                path.write_bytes(b"\x00garbage" * 64)
        with caplog.at_level(logging.WARNING, logger="chains.cache"):
            damaged = agent.invoke(QUESTION, "k3")
        assert not damaged.cached and damaged.answer == "Second [1]."
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "semantic cache" in warnings[0].getMessage()
        rebuilt = agent.invoke(QUESTION, "k4")
        assert rebuilt.cached and rebuilt.answer == "Second [1]."
