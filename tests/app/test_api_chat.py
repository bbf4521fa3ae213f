"""The chat API through the official `openai` client against a real uvicorn server, a real vLLM
engine (tiny random model: answers are noise, so tests check protocol and sources, not wording)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import pytest

from config import load_settings
from config.settings import Settings
from tests.app.api_server import API_KEY, RunningApi, start_api
from tests.app.replicas import ApiUnderTest
from tests.app.tcp_proxy import TcpProxy
from tests.llm_server import LLMServer

pytestmark = [pytest.mark.integration]

QUICK = {"max_tokens": 16}


def client(api: ApiUnderTest, key: str = API_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=api.base_url, api_key=key, max_retries=0, timeout=120)


def test_plain_completion_has_answer_sources_and_conversation(api: ApiUnderTest) -> None:
    raw = client(api).chat.completions.with_raw_response.create(
        model="rag-model", messages=[{"role": "user", "content": "How do I add my own documents?"}], **QUICK
    )
    completion = raw.parse()
    extra = completion.model_extra or {}
    conversation_id = raw.headers["x-conversation-id"]
    assert extra["conversation_id"] == conversation_id
    message = completion.choices[0].message
    assert message.content
    assert completion.choices[0].finish_reason == "stop"
    assert extra["sources"], "the answer names the passages it rests on"
    assert all(s["file"].startswith("user-guide/") and s["snippet"] for s in extra["sources"])
    assert message.annotations and message.annotations[0].type == "url_citation"
    assert message.annotations[0].url_citation.url.startswith("/v1/documents/user-guide/")
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert extra["cached"] is False and extra["retrieval_only"] is False
    assert extra["timings"]["total_s"] > 0
    history = api.history(conversation_id)
    assert [t.turn_id for t in history] == [extra["turn_id"]]
    assert completion.id == f"chatcmpl-{extra['turn_id']}"


def test_streamed_completion_sends_passages_first_and_sources_last(api: ApiUnderTest) -> None:
    stream = client(api).chat.completions.create(
        model="rag-model",
        messages=[{"role": "user", "content": "Which file formats can it read?"}],
        stream=True,
        **QUICK,
    )
    chunks = list(stream)
    first, last = chunks[0].model_extra or {}, chunks[-1].model_extra or {}
    assert chunks[0].choices[0].delta.role == "assistant"
    assert first["retrieved"], "retrieved passages come with the first chunk, before any text"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert last["sources"] and last["conversation_id"] == first["conversation_id"]
    assert {s["node_id"] for s in last["sources"]} <= {s["node_id"] for s in first["retrieved"]}
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    assert chunks[-1].choices[0].delta.model_extra["annotations"][0]["type"] == "url_citation"


def test_stream_wire_format(api: ApiUnderTest) -> None:
    body = {"messages": [{"role": "user", "content": "What is the python API?"}], "stream": True, **QUICK}
    headers = {"Authorization": f"Bearer {API_KEY}", "X-Conversation-Id": "wire-format-1"}
    with httpx.stream("POST", f"{api.base_url}/chat/completions", json=body, headers=headers, timeout=120) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-accel-buffering"] == "no"
        assert r.headers["cache-control"] == "no-cache"
        assert r.headers["x-conversation-id"] == "wire-format-1"
        events = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2][6:])["conversation_id"] == "wire-format-1"


def test_conversation_continues_by_header_and_by_field(api: ApiUnderTest) -> None:
    c = client(api)
    c.chat.completions.create(
        messages=[{"role": "user", "content": "How do I start?"}],
        model="rag-model",
        extra_headers={"X-Conversation-Id": "continued-1"},
        **QUICK,
    )
    c.chat.completions.create(
        messages=[{"role": "user", "content": "And then?"}],
        model="rag-model",
        extra_body={"conversation_id": "continued-1"},
        **QUICK,
    )
    if api.mode == "shared":
        assert api.served_by[-1] != api.served_by[-2], "both turns were answered by one replica"
    assert [t.question for t in api.history("continued-1")] == ["How do I start?", "And then?"]
    with pytest.raises(openai.BadRequestError, match="disagree"):
        c.chat.completions.create(
            messages=[{"role": "user", "content": "x"}],
            model="rag-model",
            extra_headers={"X-Conversation-Id": "a"},
            extra_body={"conversation_id": "b"},
        )


def test_client_kept_history_is_given_to_the_agent(api: ApiUnderTest) -> None:
    """Without a conversation id, earlier messages are the history: the follow-up is condensed."""
    messages = [
        {"role": "system", "content": "ignored: the agent has its own system prompt"},
        {"role": "user", "content": "How do I add documents?"},
        {"role": "assistant", "content": "Put them in data/docs and run make ingest."},
        {"role": "user", "content": "And how do I remove them?"},
    ]
    completion = client(api).chat.completions.create(model="rag-model", messages=messages, **QUICK)  # type: ignore[arg-type]
    timings = (completion.model_extra or {})["timings"]
    assert timings["condense_s"] > 0, "a follow-up with history is rewritten into a standalone question"


def test_bad_requests_get_openai_errors(api: ApiUnderTest) -> None:
    c = client(api)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="question is empty"):
        c.chat.completions.create(model="rag-model", messages=[{"role": "user", "content": "   "}])
    with pytest.raises(openai.BadRequestError, match="last message must be the user"):
        c.chat.completions.create(model="rag-model", messages=[{"role": "assistant", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="temperature"):
        c.chat.completions.create(model="rag-model", messages=[{"role": "user", "content": "hi"}], temperature=7)
    with pytest.raises(openai.BadRequestError, match="conversation id"):
        c.chat.completions.create(
            model="rag-model", messages=[{"role": "user", "content": "hi"}], extra_body={"conversation_id": "../x"}
        )
    too_long = [
        {"role": "user", "content": "Tell me a story."},
        {"role": "assistant", "content": "once upon a time " * 800},
        {"role": "user", "content": "And then?"},
    ]
    with pytest.raises(openai.BadRequestError, match="model server refused"):
        c.chat.completions.create(model="rag-model", messages=too_long, stream=True)  # type: ignore[arg-type]
    huge = "word " * 60_000  # 300 kB, above api.max_body_kb
    response = httpx.post(
        f"{api.base_url}/chat/completions",
        json={"messages": [{"role": "user", "content": huge}]},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=60,
    )
    assert response.status_code == 413


def test_top_k_is_part_of_the_cache_scope(api: ApiUnderTest) -> None:
    """An answer made from 2 passages is served again for top_k=2, never for top_k=8."""
    c = client(api)
    question = [{"role": "user", "content": "What does the cpu profile change about serving?"}]

    def ask(top_k: int) -> dict[str, Any]:
        """The passages given to the model (first chunk) and the final chunk's fields."""
        stream = c.chat.completions.create(
            model="rag-model", messages=question, stream=True, extra_body={"top_k": top_k}
        )  # type: ignore[arg-type]
        chunks = [chunk.model_extra or {} for chunk in stream]
        return {**chunks[-1], "retrieved": chunks[0]["retrieved"]}

    first = ask(2)
    assert first["cached"] is False and len(first["retrieved"]) == 2
    assert ask(2)["cached"] is True
    wider = ask(8)
    assert wider["cached"] is False, "an answer made from 2 passages was served for top_k=8"
    # How many of the 8 reach the model depends on the passage budget in the served model's tokens.
    assert len(wider["retrieved"]) >= len(first["retrieved"])
    assert ask(8)["cached"] is True


def test_models_list(api: ApiUnderTest, vllm_server: LLMServer) -> None:
    models = client(api).models.list()
    assert [m.id for m in models.data] == [vllm_server.model]


def test_auth_is_required_except_for_health(api: ApiUnderTest) -> None:
    with pytest.raises(openai.AuthenticationError):
        client(api, key="wrong-key").models.list()
    response = httpx.get(f"{api.base_url}/models", timeout=30)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["type"] == "authentication_error"
    for path in ("/metrics", "/v1/index", "/v1/documents"):
        assert httpx.get(f"{api.url}{path}", timeout=30).status_code == 401, path
    health = httpx.get(f"{api.url}/health", timeout=30)
    assert health.status_code == 200
    assert health.json()["engine"]["ok"] is True


def test_32_concurrent_chats_are_all_answered(api: ApiUnderTest) -> None:
    async def ask_all() -> list[Any]:
        async with openai.AsyncOpenAI(base_url=api.base_url, api_key=API_KEY, max_retries=0, timeout=300) as c:
            asks = [
                c.chat.completions.create(
                    model="rag-model",
                    messages=[{"role": "user", "content": f"Question number {i}: how does ingesting work?"}],
                    stream=bool(i % 2),
                    extra_body={"use_cache": False},
                    **QUICK,
                )
                for i in range(32)
            ]
            results = await asyncio.gather(*asks)
            texts = []
            for result in results:
                if isinstance(result, openai.AsyncStream):
                    texts.append("".join([(c.choices[0].delta.content or "") async for c in result]))
                else:
                    texts.append(result.choices[0].message.content)
            return texts

    texts = asyncio.run(ask_all())
    assert len(texts) == 32 and all(texts)


def _running_requests(vllm_server: LLMServer) -> float:
    match = re.search(r"^vllm:num_requests_running\{[^}]*\} (\S+)", vllm_server.metrics(), re.M)
    assert match is not None, "vLLM's /metrics has no vllm:num_requests_running"
    return float(match.group(1))


@pytest.fixture
def proxied_api(
    api_settings: Settings, vllm_server: LLMServer, tmp_path: Path
) -> Iterator[tuple[RunningApi, Any, TcpProxy]]:
    """A second API whose model traffic passes through a recording proxy."""
    from app.api import create_app
    from app.service import ChatService

    engine = urlsplit(vllm_server.base_url)
    proxy = TcpProxy(str(engine.hostname), int(engine.port or 80))
    settings = load_settings(
        "test",
        index=api_settings.index.model_dump(),
        # Long answers, so the disconnect lands mid-generation: the random model stops by itself
        # (after 326 tokens for this question), which a client running behind the engine raced.
        llm={
            **api_settings.llm.model_dump(),
            "base_url": f"http://127.0.0.1:{proxy.port}/v1",
            "max_tokens": 1200,
            "extra_body": {"ignore_eos": True},
        },
        chains={"conversations_db": tmp_path / "conversations.sqlite"},
        cache={"dir": tmp_path / "cache"},
        api={"api_key": API_KEY, "store_db": tmp_path / "app.sqlite"},
    )
    with ChatService.from_settings(settings) as service:
        running = start_api(create_app(settings, service))
        try:
            yield running, service, proxy
        finally:
            running.stop()
            proxy.close()


def test_disconnect_mid_stream_cancels_the_model_request(
    proxied_api: tuple[RunningApi, Any, TcpProxy], vllm_server: LLMServer
) -> None:
    api, service, proxy = proxied_api
    body = {"messages": [{"role": "user", "content": "Tell me everything about the HTTP API."}], "stream": True}
    headers = {"Authorization": f"Bearer {API_KEY}", "X-Conversation-Id": "disconnect-1"}
    with httpx.stream("POST", f"{api.base_url}/chat/completions", json=body, headers=headers, timeout=120) as r:
        contents = 0
        for line in r.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                contents += 1
                if contents == 2:
                    break  # leaving the block closes the connection mid-answer (1200 tokens were allowed)
    chat_calls = [c for c in proxy.connections if b"chat.completion.chunk" in c.upstream_bytes]
    assert len(chat_calls) == 1
    assert chat_calls[0].finished.wait(30), "the API kept its model request open after the client left"
    assert chat_calls[0].closed_by_client and not chat_calls[0].saw_done, "the answer was not cut short"
    deadline = time.monotonic() + 60  # a shared engine may be busy with other clients' requests meanwhile
    while _running_requests(vllm_server) > 0:
        assert time.monotonic() < deadline, "vLLM still runs requests a minute after the client left"
        time.sleep(0.1)
    deadline = time.monotonic() + 10
    while not service.history("disconnect-1"):
        assert time.monotonic() < deadline, "the stopped turn was not stored"
        time.sleep(0.1)
    (turn,) = service.history("disconnect-1")
    assert turn.stopped and turn.answer and turn.sources
    metrics = httpx.get(f"{api.url}/metrics", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30).text
    assert re.search(r'^rag_turns_total\{outcome="stopped"\} 1\.0$', metrics, re.M)


def test_client_leaving_a_plain_completion_cancels_the_model_request(
    proxied_api: tuple[RunningApi, Any, TcpProxy], vllm_server: LLMServer
) -> None:
    """Not streamed: the client gives up (closes its connection, as a client timeout does) once the
    model is answering; the API must notice and cancel the model request, not finish unseen.

    The client is a plain socket: a cancelled httpx request sometimes closed its connection only
    once the whole answer had arrived (its cancel held back until the response completed), which
    tested the client library's timing instead of the API's."""
    api, service, proxy = proxied_api
    body = json.dumps({"messages": [{"role": "user", "content": "Tell me everything about the HTTP API."}]}).encode()
    url = urlsplit(api.base_url)
    head = (
        f"POST {url.path}/chat/completions HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {API_KEY}\r\nX-Conversation-Id: plain-disconnect-1\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection((str(url.hostname), int(url.port or 80)), timeout=120) as sock:
        sock.sendall(head.encode() + body)
        deadline = time.monotonic() + 120
        while not any(b"chat.completion.chunk" in c.upstream_bytes for c in proxy.connections):
            assert time.monotonic() < deadline, "the model request never started"
            time.sleep(0.02)
        assert not any(c.saw_done for c in proxy.connections), "the answer ended before the client left"
    # leaving the block closed the connection mid-answer (1200 tokens were asked for)
    (call,) = [c for c in proxy.connections if b"chat.completion.chunk" in c.upstream_bytes]
    assert call.finished.wait(30), "the API kept its model request open after the client left"
    assert call.closed_by_client and not call.saw_done, "the answer was not cut short"
    deadline = time.monotonic() + 60  # a shared engine may be busy with other clients' requests meanwhile
    while _running_requests(vllm_server) > 0:
        assert time.monotonic() < deadline, "vLLM still runs requests a minute after the client left"
        time.sleep(0.1)
    deadline = time.monotonic() + 10
    while not service.history("plain-disconnect-1"):
        assert time.monotonic() < deadline, "the stopped turn was not stored"
        time.sleep(0.1)
    (turn,) = service.history("plain-disconnect-1")
    assert turn.stopped and turn.sources
    metrics = httpx.get(f"{api.url}/metrics", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30).text
    assert re.search(r'^rag_turns_total\{outcome="stopped"\} 1\.0$', metrics, re.M)
    assert re.search(
        r'^rag_api_requests_total\{method="POST",route="/v1/chat/completions",status="499"\} 1\.0$', metrics, re.M
    )


@pytest.mark.per_process  # Prometheus counts per process: each replica is scraped on its own
def test_metrics_count_requests_turns_tokens_and_cache(api: ApiUnderTest) -> None:
    c = client(api)
    for _ in range(2):  # the second, identical question is a cache hit
        c.chat.completions.create(
            model="rag-model", messages=[{"role": "user", "content": "What does the metrics route show?"}]
        )
    text = httpx.get(f"{api.url}/metrics", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30).text

    def value(pattern: str) -> float:
        match = re.search(rf"^{pattern} (\S+)$", text, re.M)
        assert match is not None, f"{pattern} missing from /metrics"
        return float(match.group(1))

    assert value(r'rag_api_requests_total\{method="POST",route="/v1/chat/completions",status="200"\}') >= 2
    assert value(r'rag_cache_lookups_total\{result="hit"\}') >= 1
    assert value(r'rag_turns_total\{outcome="cached"\}') >= 1
    assert value(r'rag_tokens_total\{kind="completion"\}') > 0
    assert value("rag_ttft_seconds_count") >= 2
    assert value(r'rag_turn_stage_seconds_count\{stage="retrieval"\}') >= 1
