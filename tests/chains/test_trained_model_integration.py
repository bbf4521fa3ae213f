"""The opt-in trained tiny model (issue 9) behind its own real vLLM CPU server: answers that quote and cite a
retrieved passage, a real hermes tool call through vLLM's parser, the agent's full tool loop and
its search budget, follow-up rewriting, and n-gram speculation that accepts drafts."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import ToolMessage
from openai import OpenAI

from chains import RagAgent, TurnResult
from chains.prompts import SYSTEM_PROMPT, question_with_context
from chains.synthetic import tool_schema
from config import load_settings
from config.settings import Settings
from serving.launch import EngineServer, free_port
from tests.llm_server import LLMServer

pytestmark = pytest.mark.integration

NOT_LEARNED = "behaviour not learned yet (issue 9), held-out exact match "
_ANSWER = re.compile(r"^(?P<sentence>.+) \[(?P<n>\d+)\]$", re.DOTALL)


def _metric(text: str, name: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def vllm_server(trained_model_path: Path) -> Iterator[LLMServer]:
    """A real engine (test profile) on the trained model, for this module only."""
    serving = {"host": "127.0.0.1", "port": free_port(), "model": str(trained_model_path)}
    settings = load_settings("test", serving=serving)
    server = EngineServer(settings.serving).start()
    try:
        yield LLMServer(base_url=server.base_url, model=settings.serving.served_model_name)
    finally:
        server.stop()


@pytest.fixture
def live_settings(unit_settings: Settings, vllm_server: Any) -> Settings:
    settings = unit_settings.model_copy(deep=True)
    settings.llm.base_url = vllm_server.base_url
    settings.llm.model = vllm_server.model
    settings.llm.max_tokens = 96  # a quoted sentence plus its citation
    return settings


@pytest.fixture
def agent(live_settings: Settings, retriever: Any) -> Iterator[RagAgent]:
    with RagAgent.from_settings(live_settings, retriever=retriever) as agent:
        yield agent


def _cited(result: TurnResult) -> tuple[str, int]:
    match = _ANSWER.match(result.answer.strip())
    assert match, f"not a quoted sentence with a citation: {result.answer!r}"
    return _flat(match["sentence"]), int(match["n"])


@pytest.mark.xfail(strict=True, reason=NOT_LEARNED + "answer 24 % (87 % of tokens)")
def test_streamed_answer_quotes_a_retrieved_passage_and_cites_it(agent: RagAgent) -> None:
    *pieces, result = agent.stream("What does the X200 warranty cover?", "quote")
    assert isinstance(result, TurnResult) and "".join(pieces) == result.answer and len(pieces) > 1
    sentence, number = _cited(result)
    [source] = [s for s in result.sources if s.id == number]  # the cited passage is among the sources
    assert sentence in _flat(source.snippet)
    assert source.file == "warranty.md"
    assert [s.kind for s in result.steps] == ["model"]  # passages were there: no search needed


@pytest.mark.xfail(
    strict=True,
    reason=NOT_LEARNED + "tool_call 72 %: here the query copy loops ('How long does the X200 batttttt...') to the "
    "length limit, so vLLM's parser sees no closed call (the second attempt's model passed this)",
)
def test_hermes_tool_call_comes_back_as_a_parsed_tool_calls_entry(vllm_server: Any) -> None:
    client = OpenAI(base_url=vllm_server.base_url, api_key="EMPTY", max_retries=0)
    response = client.chat.completions.create(
        model=vllm_server.model,
        messages=[
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": question_with_context("", "How long does the X200 battery last?")},
        ],
        tools=[tool_schema()],  # type: ignore[list-item]
        temperature=0,
        max_tokens=64,
    )
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls, choice.message.content
    call = choice.message.tool_calls[0]
    assert call.function.name == "search_documents"  # type: ignore[union-attr]
    arguments = json.loads(call.function.arguments)  # type: ignore[union-attr]
    assert set(arguments) == {"query"} and isinstance(arguments["query"], str) and arguments["query"]


@pytest.mark.xfail(strict=True, reason=NOT_LEARNED + "tool_call 72 % (98 % of tokens), tool_answer 24 %")
def test_search_request_runs_the_full_tool_loop_and_cites_what_the_tool_returned(agent: RagAgent) -> None:
    result = agent.invoke("Search for the battery charging time.", "loop")
    assert [(s.kind, s.name) for s in result.steps] == [
        ("model", "model"),
        ("tool", "search_documents"),
        ("model", "model"),
    ]
    [tool_message] = [m for m in agent.history("loop") if isinstance(m, ToolMessage)]
    returned = {int(n) for n in re.findall(r"^\[(\d+)\] ", tool_message.text, re.M)}
    sentence, number = _cited(result)
    assert number in returned
    block = tool_message.text.split(f"[{number}] ", 1)[1].split("\n\n[", 1)[0]
    assert sentence in _flat(block)
    assert any(s.id == number for s in result.sources)


def test_search_budget_ends_the_loop_with_an_answer(live_settings: Settings, retriever: Any) -> None:
    settings = live_settings.model_copy(deep=True)
    settings.chains.max_model_calls = 1  # the first call already gets no tools
    with RagAgent.from_settings(settings, retriever=retriever) as agent:
        result = agent.invoke("Search for the battery charging time.", "budget")
    assert [s.kind for s in result.steps] == ["model"]  # no tools offered: no search, an answer
    assert result.answer.strip() and result.sources


@pytest.mark.xfail(strict=True, reason=NOT_LEARNED + "condense 52 % (92 % of tokens)")
def test_follow_up_is_rewritten_with_the_last_subject(agent: RagAgent) -> None:
    agent.invoke("Tell me about the X200 warranty.", "follow")
    result = agent.invoke("How do I claim it?", "follow")
    assert result.standalone_question == "How do I claim the X200 warranty?"
    named = agent.invoke("How long does the X200 battery last?", "follow")
    assert named.standalone_question == "How long does the X200 battery last?"


def test_ngram_speculation_accepts_drafts_on_rag_answers(agent: RagAgent, vllm_server: Any) -> None:
    """The test profile serves with n-gram speculation; quoted answers repeat the prompt's n-grams."""
    before = vllm_server.metrics()
    for question in ("What does the X200 warranty cover?", "How long does the X200 battery last?"):
        agent.invoke(question, use_cache=False)
    after = vllm_server.metrics()
    name = "vllm:spec_decode_num_accepted_tokens_total"
    assert _metric(after, name) - _metric(before, name) > 0
