"""The agent against the real vLLM CPU server (tiny model), real Chroma, real GPTCache.

The tiny model's answers are noise: these tests check protocol and plumbing, never wording.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chains import RagAgent, TurnResult
from chains.condense import is_summary
from config import load_settings
from config.settings import REPO_ROOT, Settings
from tests.chains.chain_docs import DOCS, write_docs

pytestmark = pytest.mark.integration

QUESTION = "What does the X200 warranty cover?"


def _metric(text: str, name: str) -> float:
    """Sum of a counter over its label sets in vLLM's Prometheus text."""
    return sum(float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))


@pytest.fixture
def live_settings(unit_settings: Settings, vllm_server: Any) -> Settings:
    settings = unit_settings.model_copy(deep=True)
    settings.llm.base_url = vllm_server.base_url
    settings.llm.model = vllm_server.model
    settings.cache.enabled = True
    return settings


@pytest.fixture
def agent(live_settings: Settings, retriever: Any) -> Iterator[RagAgent]:
    with RagAgent.from_settings(live_settings, retriever=retriever) as agent:
        yield agent


def test_stream_yields_tokens_then_the_result(agent: RagAgent) -> None:
    pieces = list(agent.stream(QUESTION, "s1"))
    result = pieces[-1]
    texts = pieces[:-1]
    assert isinstance(result, TurnResult)
    assert len(texts) > 3 and all(isinstance(p, str) and p for p in texts)  # token by token
    assert "".join(texts) == result.answer
    assert not result.cached and not result.retrieval_only
    assert result.sources and all(s.file in DOCS for s in result.sources)
    t = result.timings
    assert t.ttft_s is not None and 0 < t.ttft_s <= t.total_s and t.retrieval_s > 0 and t.cache_lookup_s > 0
    assert result.tokens.prompt_tokens > 0 and result.tokens.completion_tokens > 0 and result.tokens.llm_calls == 1
    assert [s.kind for s in result.steps] == ["model"]


def test_stream_interval_sends_the_answer_in_fewer_larger_pieces(live_settings: Settings, retriever: Any) -> None:
    """Four tokens per streamed event bound the number of pieces. Only the upper bound is checked:
    a loaded server also merges token-by-token events (its output queue coalesces when the client
    lags), so a lower bound on the pieces of `stream_interval: 1` would be a timing test."""
    settings = live_settings.model_copy(update={"llm": live_settings.llm.model_copy(update={"stream_interval": 4})})
    with RagAgent.from_settings(settings, retriever=retriever) as agent:
        *texts, result = agent.stream(QUESTION, use_cache=False)
    assert isinstance(result, TurnResult) and "".join(texts) == result.answer
    tokens = result.tokens.completion_tokens
    assert tokens >= 16  # long enough that one event per token would break the bound below
    assert len(texts) <= tokens // 4 + 2  # the first token alone, then fours, then the rest


async def test_abatch_of_16_concurrent_questions(agent: RagAgent) -> None:
    questions = [
        f"Question {i}: what about {topic}?"
        for i, topic in enumerate(["warranty", "battery", "shipping", "returns"] * 4)
    ]
    results = await agent.abatch(questions, use_cache=False)
    assert len(results) == 16
    for question, result in zip(questions, results, strict=True):
        assert isinstance(result, TurnResult)
        assert result.question == question and result.answer and not result.retrieval_only
        assert len(agent.history(result.conversation_id)) == 2
    assert len({r.conversation_id for r in results if isinstance(r, TurnResult)}) == 16


async def test_abatch_runs_turns_of_one_conversation_in_order(agent: RagAgent) -> None:
    questions = ["First: the warranty?", "Second: the battery?", "Third: shipping?"]
    results = await agent.abatch(questions, ["same"] * 3, use_cache=False)
    history = agent.history("same")
    assert [m.text for m in history if m.type == "human"] == questions
    assert all(isinstance(r, TurnResult) and not r.retrieval_only for r in results)


def test_cache_miss_then_hit_without_calling_the_model(agent: RagAgent, vllm_server: Any) -> None:
    first = agent.invoke(QUESTION, "c1")
    assert not first.cached
    before = _metric(vllm_server.metrics(), "vllm:request_success_total")
    pieces = list(agent.stream(QUESTION, "c2"))
    hit = pieces[-1]
    assert isinstance(hit, TurnResult) and hit.cached
    assert pieces[:-1] == [first.answer] and hit.answer == first.answer
    assert hit.sources == first.sources
    assert hit.tokens.llm_calls == 0 and hit.steps == ()
    assert _metric(vllm_server.metrics(), "vllm:request_success_total") == before  # no model request
    assert [m.text for m in agent.history("c2")] == [QUESTION, first.answer]
    stats = agent.cache_stats()
    assert stats is not None and stats.hits == 1 and stats.misses == 1 and stats.entries == 1


def test_cache_opt_out_neither_reads_nor_writes(agent: RagAgent) -> None:
    agent.invoke(QUESTION, "o1")
    assert not agent.invoke(QUESTION, "o2", use_cache=False).cached
    other = "How long does shipping to Norway take?"
    agent.invoke(other, "o3", use_cache=False)
    assert not agent.invoke(other, "o4").cached
    stats = agent.cache_stats()
    assert stats is not None and stats.entries == 2  # QUESTION and the last `other` turn


def test_cache_is_scoped_by_prompt_version(agent: RagAgent, monkeypatch: pytest.MonkeyPatch) -> None:
    agent.invoke(QUESTION, "p1")
    monkeypatch.setattr("chains.agent.PROMPT_VERSION", "p1-changed")
    assert not agent.invoke(QUESTION, "p2").cached
    monkeypatch.undo()
    assert agent.invoke(QUESTION, "p3").cached


def test_cached_answers_expire_after_the_ttl(live_settings: Settings, retriever: Any) -> None:
    live_settings.cache.ttl_s = 1
    with RagAgent.from_settings(live_settings, retriever=retriever) as agent:
        agent.invoke(QUESTION, "t1")
        assert agent.invoke(QUESTION, "t2").cached
        time.sleep(1.5)
        assert not agent.invoke(QUESTION, "t3").cached


def test_reingest_invalidates_cached_answers(live_settings: Settings, tmp_path: Path, embed_model: Any) -> None:
    from indexing.pipeline import ingest
    from indexing.retrieval import open_retriever

    docs = write_docs(tmp_path / "docs")
    live_settings.index.index_dir = tmp_path / "index"
    ingest(live_settings.index, [docs], progress=False, embed_model=embed_model)
    retriever = open_retriever(live_settings.index, embed_model=embed_model)
    with RagAgent.from_settings(live_settings, retriever=retriever) as agent:
        agent.invoke(QUESTION, "r1")
        assert agent.invoke(QUESTION, "r2").cached
        version = retriever.index_version
        (docs / "warranty.md").write_text(DOCS["warranty.md"].replace("two years", "three years"), encoding="utf-8")
        ingest(live_settings.index, [docs], progress=False, embed_model=embed_model)
        assert retriever.index_version != version
        after = agent.invoke(QUESTION, "r3")
        assert not after.cached and not after.retrieval_only
        assert agent.invoke(QUESTION, "r4").cached  # the new index version gets its own entry
    shutil.rmtree(tmp_path / "index")


def test_conversation_persists_across_a_new_agent_object(live_settings: Settings, retriever: Any) -> None:
    with RagAgent.from_settings(live_settings, retriever=retriever) as first:
        answer = first.invoke(QUESTION, "persist").answer
    with RagAgent.from_settings(live_settings, retriever=retriever) as second:
        assert [m.text for m in second.history("persist")] == [QUESTION, answer]
        follow_up = second.invoke("and the battery?", "persist", use_cache=False)
        assert follow_up.timings.condense_s > 0 and follow_up.tokens.llm_calls == 2  # condense + answer
        assert len(second.history("persist")) == 4


def test_prefix_cache_hits_grow_across_a_conversation(agent: RagAgent, vllm_server: Any) -> None:
    questions = [QUESTION, "and the battery?", "how long does shipping take?", "who makes it?"]
    hits, queries = [], []
    for question in questions:
        before = vllm_server.metrics()
        agent.invoke(question, "prefix", use_cache=False)
        after = vllm_server.metrics()
        hits.append(_metric(after, "vllm:prefix_cache_hits_total") - _metric(before, "vllm:prefix_cache_hits_total"))
        queries.append(
            _metric(after, "vllm:prefix_cache_queries_total") - _metric(before, "vllm:prefix_cache_queries_total")
        )
    # From the second turn on, the system prompt, tool schema and earlier turns come from the cache.
    assert all(h > 0 for h in hits[1:])
    assert sum(hits[1:]) / sum(queries[1:]) > 0.3


def test_summary_waits_for_the_history_budget_not_the_prompt_size(agent: RagAgent, live_settings: Settings) -> None:
    # Every call's prompt (system, tools, passages) is far above the 256-token history budget
    # of the test profile; the short history of three turns is not.
    for question in ["the warranty?", "and the battery?", "and shipping?"]:
        result = agent.invoke(question, "budget", use_cache=False)
        assert result.tokens.prompt_tokens > live_settings.chains.history_token_budget
    assert result.tokens.llm_calls == 2  # condense + answer, no summary call
    history = agent.history("budget")
    assert len(history) == 6 and not any(is_summary(m) for m in history)


def test_summary_replaces_old_turns_past_the_budget(live_settings: Settings, retriever: Any) -> None:
    live_settings.chains.history_token_budget = 64
    live_settings.chains.keep_last_messages = 2
    with RagAgent.from_settings(live_settings, retriever=retriever) as agent:
        questions = ["warranty?", "and the battery?", "and shipping?"]  # follow-ups: each gets a condense call
        results = [agent.invoke(q, "summary", use_cache=False) for q in questions]
        history = agent.history("summary")
    assert results[-1].tokens.llm_calls == 3  # condense, summary, answer
    assert is_summary(history[0]) and history[0].text
    assert [m.text for m in history[-2:-1]] == ["and shipping?"]
    assert len(history) == 5  # summary, last turn, question, answer


async def test_the_served_tokenizer_is_measured_and_an_unreachable_server_is_none(vllm_server: Any) -> None:
    from chains.llm import served_chars_per_token

    text = (REPO_ROOT / "data" / "docs" / "user-guide" / "http-api.md").read_text(encoding="utf-8")
    ratio = await served_chars_per_token(vllm_server.base_url, vllm_server.model, text)
    assert ratio is not None and 1.0 < ratio < 8.0
    assert await served_chars_per_token("http://127.0.0.1:9/v1", "rag-model", text, timeout_s=1.0) is None


def test_a_full_context_budget_fits_the_served_window(tmp_path: Path, vllm_server: Any, embed_model: Any) -> None:
    """The `cpu` profile's budgets (a 1,024-token passage budget, 256-token answers, a 2,048-token
    window) over the sample user guide: the budget is counted in estimated tokens, and the tiny
    model's tokenizer packs about 2.3 characters per token, not 4. Unscaled, the prompt overflowed
    the window and every such turn fell back to retrieval only."""
    from indexing.pipeline import ingest
    from indexing.retrieval import open_retriever

    cpu = load_settings("cpu")
    shutil.copytree(REPO_ROOT / "data" / "docs" / "user-guide", tmp_path / "docs" / "user-guide")
    settings = load_settings(
        "test",
        index={"index_dir": tmp_path / "index", "docs_dir": tmp_path / "docs", "top_k": 8},
        llm={"base_url": vllm_server.base_url, "model": vllm_server.model, "max_tokens": cpu.llm.max_tokens},
        chains={
            "conversations_db": tmp_path / "conversations.sqlite",
            "context_token_budget": cpu.chains.context_token_budget,
        },
        cache={"enabled": False},
    )
    assert settings.serving.max_model_len <= cpu.serving.max_model_len
    ingest(settings.index, [settings.index.docs_dir], progress=False, embed_model=embed_model)
    retriever = open_retriever(settings.index, embed_model=embed_model)
    try:
        with RagAgent.from_settings(settings, retriever=retriever) as agent:
            result = agent.invoke("How do I call the HTTP API with curl and an API key?")
    finally:
        retriever.close()
    assert isinstance(result, TurnResult)
    assert not result.retrieval_only, result.error
    assert result.tokens.prompt_tokens + cpu.llm.max_tokens <= settings.serving.max_model_len
