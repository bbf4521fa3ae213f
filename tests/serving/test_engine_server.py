"""The real vLLM CPU server on the tiny model, through the OpenAI client: protocol and plumbing.

The model's words are noise; these tests check what the server does with requests.
"""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest
from openai import AsyncOpenAI, OpenAI
from openai.types.chat import ChatCompletionToolParam

from tests.llm_server import LLMServer

pytestmark = [pytest.mark.integration, pytest.mark.engine]

TOOLS: list[ChatCompletionToolParam] = [
    {
        "type": "function",
        "function": {
            "name": "search_docs",
            "description": "Search the user's indexed documents.",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string", "description": "What to look for."}},
                "required": ["query"],
            },
        },
    }
]


@pytest.fixture(scope="module")
def client(vllm_server: LLMServer) -> OpenAI:
    return OpenAI(base_url=vllm_server.base_url, api_key="EMPTY", timeout=120, max_retries=0)


def metric(text: str, name: str) -> float:
    """Sum of a Prometheus counter over its label sets (0 when absent)."""
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? ([0-9.eE+-]+)$", re.MULTILINE)
    return sum(float(value) for value in pattern.findall(text))


def test_health_and_model_listing(vllm_server: LLMServer, client: OpenAI) -> None:
    assert httpx.get(f"{vllm_server.root_url}/health", timeout=5).status_code == 200
    assert [m.id for m in client.models.list().data] == [vllm_server.model]


def test_chat_completion(vllm_server: LLMServer, client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model=vllm_server.model,
        messages=[{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is vLLM?"}],
        max_completion_tokens=12,
        extra_body={"ignore_eos": True},
    )
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length"
    assert reply.usage is not None and reply.usage.prompt_tokens > 5


def test_streaming_delivers_tokens_incrementally(vllm_server: LLMServer, client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model=vllm_server.model,
        messages=[{"role": "user", "content": "Stream something."}],
        max_completion_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            finish = choice.finish_reason or finish
    assert len(pieces) >= 2  # more than one chunk: streamed, not one blob
    assert finish == "length"
    assert usage is not None and usage.completion_tokens == 16


@pytest.mark.parametrize("limit", [1, 5, 23])
def test_max_completion_tokens_is_honoured(vllm_server: LLMServer, client: OpenAI, limit: int) -> None:
    forced = client.chat.completions.create(
        model=vllm_server.model,
        messages=[{"role": "user", "content": "Write a long essay."}],
        max_completion_tokens=limit,
        extra_body={"ignore_eos": True},
    )
    assert forced.usage is not None and forced.usage.completion_tokens == limit
    assert forced.choices[0].finish_reason == "length"
    free = client.chat.completions.create(
        model=vllm_server.model, messages=[{"role": "user", "content": "Hi"}], max_completion_tokens=limit
    )
    assert free.usage is not None and 0 < free.usage.completion_tokens <= limit


async def test_sixteen_concurrent_requests_are_all_answered(vllm_server: LLMServer) -> None:
    client = AsyncOpenAI(base_url=vllm_server.base_url, api_key="EMPTY", timeout=180, max_retries=0)

    async def ask(i: int) -> tuple[int, str | None, int]:
        reply = await client.chat.completions.create(
            model=vllm_server.model,
            messages=[{"role": "user", "content": f"Question number {i}: what is in document {i}?"}],
            max_completion_tokens=8,
            extra_body={"ignore_eos": True},
        )
        assert reply.usage is not None
        return i, reply.choices[0].finish_reason, reply.usage.completion_tokens

    try:
        answers = await asyncio.gather(*(ask(i) for i in range(16)))
    finally:
        await client.close()
    assert sorted(answers) == [(i, "length", 8) for i in range(16)]


def test_tool_calling_request_is_accepted(vllm_server: LLMServer, client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model=vllm_server.model,
        messages=[{"role": "user", "content": "Find what my documents say about prefix caching."}],
        tools=TOOLS,
        tool_choice="auto",
        max_completion_tokens=24,
    )
    choice = reply.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    # The random model rarely emits a well-formed call; when it does, the hermes parser must parse it.
    for call in choice.message.tool_calls or []:
        assert call.type == "function" and call.function.name == "search_docs"
    # The tools section reached the prompt through the chat template: far more prompt tokens.
    bare = client.chat.completions.create(
        model=vllm_server.model,
        messages=[{"role": "user", "content": "Find what my documents say about prefix caching."}],
        max_completion_tokens=1,
    )
    assert reply.usage is not None and bare.usage is not None
    assert reply.usage.prompt_tokens > bare.usage.prompt_tokens + 50


def test_metrics_show_prefix_cache_hits_for_a_repeated_long_prompt(vllm_server: LLMServer, client: OpenAI) -> None:
    context = " ".join(
        f"Passage {i}: chunks are embedded, indexed in Chroma and retrieved by similarity." for i in range(40)
    )
    before = metric(vllm_server.metrics(), "vllm:prefix_cache_hits_total")
    for question in ("What is indexed?", "What is retrieved?"):
        client.chat.completions.create(
            model=vllm_server.model,
            messages=[{"role": "system", "content": context}, {"role": "user", "content": question}],
            max_completion_tokens=2,
        )
    hits = metric(vllm_server.metrics(), "vllm:prefix_cache_hits_total") - before
    assert hits >= 512  # most of the ~1,000-token shared context came from the cache the second time


def test_metrics_show_ngram_speculative_drafts(vllm_server: LLMServer, client: OpenAI) -> None:
    text = vllm_server.metrics()
    drafts_before = metric(text, "vllm:spec_decode_num_draft_tokens_total")
    accepted_before = metric(text, "vllm:spec_decode_num_accepted_tokens_total")
    # Restricting the output to three tokens makes it repeat itself, as answers quoting their
    # context do: the n-gram proposer then finds matches to draft from.
    client.chat.completions.create(
        model=vllm_server.model,
        messages=[{"role": "user", "content": "Quote the passage."}],
        max_completion_tokens=48,
        temperature=0,
        extra_body={"ignore_eos": True, "allowed_token_ids": [300, 301, 302]},
    )
    text = vllm_server.metrics()
    assert metric(text, "vllm:spec_decode_num_draft_tokens_total") - drafts_before > 0
    assert metric(text, "vllm:spec_decode_num_accepted_tokens_total") - accepted_before > 0
