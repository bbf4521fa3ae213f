"""The engine fails under a real API: killed mid-answer, or too slow.

The model traffic passes through `TcpProxy`, which plays the faults on real connections to the
session's real vLLM server: `cut()` ends every connection at once (what the API sees when the
engine process dies: a broken stream; what vLLM sees: its client gone, so it aborts the request),
`refuse` keeps the port dead until "the engine is back", `delay_s` holds the answer back.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from config.settings import Settings
from tests.app.api_server import RunningApi, start_api
from tests.app.tcp_proxy import TcpProxy
from tests.llm_server import LLMServer
from tests.reliability.conftest import SettingsFactory

pytestmark = [pytest.mark.integration]


@contextmanager
def _serve(settings: Settings) -> Iterator[tuple[RunningApi, Any]]:
    from app.api import create_app
    from app.service import ChatService

    with ChatService.from_settings(settings) as service:
        running = start_api(create_app(settings, service))
        try:
            yield running, service
        finally:
            running.stop()


@pytest.fixture
def proxied_api(make_settings: SettingsFactory, proxy: TcpProxy) -> Iterator[tuple[RunningApi, Any]]:
    """An API whose engine is behind the fault proxy; long answers, so a cut lands mid-answer."""
    settings = make_settings(
        llm={"base_url": f"http://127.0.0.1:{proxy.port}/v1", "max_tokens": 1200, "request_timeout_s": 20}
    )
    with _serve(settings) as served:
        yield served


def _running_requests(vllm_server: LLMServer) -> float:
    match = re.search(r"^vllm:num_requests_running\{[^}]*\} (\S+)", vllm_server.metrics(), re.M)
    assert match is not None, "vLLM's /metrics has no vllm:num_requests_running"
    return float(match.group(1))


def _events(response: httpx.Response) -> Iterator[Any]:
    """The decoded SSE events of a streamed answer ("[DONE]" as is)."""
    for line in response.iter_lines():
        if line:
            assert line.startswith("data: "), line
            yield line[6:] if line == "data: [DONE]" else json.loads(line[6:])


@pytest.mark.timeout(180)
def test_engine_killed_mid_answer_gives_an_error_event_and_keeps_the_partial_answer(
    proxied_api: tuple[RunningApi, Any], proxy: TcpProxy, vllm_server: LLMServer
) -> None:
    api, service = proxied_api
    body = {"messages": [{"role": "user", "content": "Tell me everything about the HTTP API."}], "stream": True}
    headers = {"X-Conversation-Id": "engine-killed-1"}
    received: list[Any] = []
    with httpx.stream("POST", f"{api.base_url}/chat/completions", json=body, headers=headers, timeout=120) as r:
        assert r.status_code == 200
        texts = 0
        for event in _events(r):
            received.append(event)
            delta = event["choices"][0]["delta"] if isinstance(event, dict) and "choices" in event else {}
            texts += bool(delta.get("content"))
            if texts == 3 and not proxy.refuse:
                proxy.refuse = True  # the engine stays dead ...
                proxy.cut()  # ... from the middle of this answer on
    streamed = "".join(e["choices"][0]["delta"].get("content") or "" for e in received[:-2])

    assert received[-1] == "[DONE]"
    error = received[-2]["error"]
    assert error["code"] == "model_server_failed" and "the answer was cut off" in error["message"]
    assert all("finish_reason" not in e or e["choices"][0]["finish_reason"] is None for e in received[:-2])
    (turn,) = service.history("engine-killed-1")
    assert turn.stopped and turn.answer == streamed and turn.sources
    assert any("cut off" in n for n in turn.notices)

    deadline = time.monotonic() + 60  # vLLM saw its client go: the request must not run on
    while _running_requests(vllm_server) > 0:
        assert time.monotonic() < deadline, "vLLM still runs a request a minute after the engine connection died"
        time.sleep(0.2)

    proxy.refuse = False  # the engine is back
    again = httpx.post(
        f"{api.base_url}/chat/completions",
        json={"messages": [{"role": "user", "content": "And the Python API?"}], "max_tokens": 8},
        headers=headers,
        timeout=120,
    )
    assert again.status_code == 200, again.text
    answer = again.json()
    assert answer["choices"][0]["finish_reason"] == "stop" and not answer["retrieval_only"]
    turns = service.history("engine-killed-1")
    assert [t.stopped for t in turns] == [True, False] and turns[0].answer == streamed
    metrics = httpx.get(f"{api.url}/metrics", timeout=30).text
    assert re.search(r'^rag_turns_total\{outcome="interrupted"\} 1\.0$', metrics, re.M)


@pytest.mark.timeout(120)
def test_engine_killed_mid_answer_without_streaming_is_a_502(
    proxied_api: tuple[RunningApi, Any], proxy: TcpProxy
) -> None:
    """The client saw nothing yet: an HTTP error, and the partial answer is still kept."""
    api, service = proxied_api

    def cut_once_text_flows() -> None:
        deadline = time.monotonic() + 60
        # vLLM's first chunk carries `"content":""`: wait for real text, or the cut lands before
        # the answer starts and the turn is (rightly) answered from retrieval only
        while not any(re.search(rb'"content":"[^"]', c.upstream_bytes) for c in proxy.connections):
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)
        proxy.refuse = True
        proxy.cut()

    cutter = threading.Thread(target=cut_once_text_flows, daemon=True)
    cutter.start()
    response = httpx.post(
        f"{api.base_url}/chat/completions",
        json={"messages": [{"role": "user", "content": "Tell me everything about ingesting."}]},
        headers={"X-Conversation-Id": "engine-killed-2"},
        timeout=120,
    )
    cutter.join(timeout=5)
    assert response.status_code == 502, response.text
    assert "the answer was cut off" in response.json()["error"]["message"]
    assert response.headers["x-conversation-id"] == "engine-killed-2"
    (turn,) = service.history("engine-killed-2")
    assert turn.stopped and turn.answer


def _open_fds() -> Counter[str]:
    """This process's open descriptors by kind (socket, pipe, anon_inode:..., or the file's folder)."""
    kinds: Counter[str] = Counter()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed while listing
            continue
        kinds[target.split(":")[0] if ":" in target and not target.startswith("/") else os.path.dirname(target)] += 1
    return kinds


POOL_WORKERS = ("AnyIO worker thread", "asyncio_", "uvloop_")
"""Worker threads of bounded pools that grow on demand: Starlette's (anyio, 40 at most) and the
event loops' default executors (min(32, cpus + 4) each: the API's uvloop and the agent's loop)."""
POOL_SLACK = 10
"""Pool threads can outnumber the limiters for a moment (a pruned anyio worker is only told to stop;
threads are counted while they exit): CI once saw 56 against the 52 the limiters allow, which pool
held the extra ones was not found. The check is about growth per request, which would show +100."""
POOL_BOUND = 40 + 2 * min(32, (os.cpu_count() or 1) + 4) + POOL_SLACK


def _threads() -> tuple[list[str], int]:
    """(names of the threads outside the pools and the proxy, which plays the engine; pool workers)."""
    names = [t.name for t in threading.enumerate() if not t.name.startswith("tcp-proxy")]
    others = sorted(n for n in names if not n.startswith(POOL_WORKERS))
    return others, len(names) - len(others)


@pytest.mark.timeout(240)
def test_slow_engine_times_out_and_leaks_nothing_over_100_requests(
    make_settings: SettingsFactory, proxy: TcpProxy
) -> None:
    timeout_s = 1.0
    settings = make_settings(
        llm={"base_url": f"http://127.0.0.1:{proxy.port}/v1", "request_timeout_s": timeout_s, "max_retries": 1}
    )
    proxy.delay_s = 5 * timeout_s  # every answer arrives long after the timeout

    async def ask(url: str, n: int) -> dict[str, Any]:
        body = {"messages": [{"role": "user", "content": f"Question {n}: how do I ingest?"}], "use_cache": False}
        async with httpx.AsyncClient(timeout=60) as client:
            if n % 2:
                async with client.stream("POST", url, json={**body, "stream": True}) as r:
                    assert r.status_code == 200
                    lines = [line async for line in r.aiter_lines() if line.startswith("data: {")]
                return dict(json.loads(lines[-1][6:]))
            response = await client.post(url, json=body)
            assert response.status_code == 200, response.text
            return dict(response.json())

    async def round_of(url: str, count: int, start: int) -> list[dict[str, Any]]:
        return await asyncio.gather(*(ask(url, start + n) for n in range(count)))

    def settle() -> tuple[Counter[str], tuple[list[str], int]]:
        deadline = time.monotonic() + 60  # the proxy's pumps wake up after delay_s and end
        while not all(c.finished.is_set() for c in proxy.connections):
            assert time.monotonic() < deadline, "proxy connections still open a minute after the timeouts"
            time.sleep(0.1)
        gc.collect()
        return _open_fds(), _threads()

    with _serve(settings) as (api, _):
        url = f"{api.base_url}/chat/completions"
        warm = asyncio.run(round_of(url, 10, 0))  # pools and worker threads reach their working size
        fds_before, threads_before = settle()
        answers: list[dict[str, Any]] = []
        for start in range(10, 110, 10):
            answers += asyncio.run(round_of(url, 10, start))
        fds_after, threads_after = settle()

    assert len(answers) == 100
    for answer in warm + answers:
        assert answer["retrieval_only"] is True and answer["sources"]
        timed_out = [n for n in answer["notices"] if "sent nothing for 1 s" in n or "timed out" in n]
        assert timed_out, answer["notices"]
        assert answer["timings"]["total_s"] < proxy.delay_s, "the answer waited for the engine, not the timeout"
    # A leak per request would show +100. The allowances cover what configuration bounds, not the
    # request count: kept-alive connections of the HTTP pools (test client, API, agent) and files
    # opened lazily, and pool workers started when more requests overlapped than during the
    # warm-up (the pools' own limits cap them). On failure the message shows the new descriptors.
    assert fds_after.total() <= fds_before.total() + 8, (fds_after - fds_before, fds_after)
    (others_before, _), (others_after, workers_after) = threads_before, threads_after
    assert len(others_after) <= len(others_before) + 1, (others_before, others_after)
    assert workers_after <= POOL_BOUND, workers_after
