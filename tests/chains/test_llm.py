"""Telling model-server outages from bugs, and never waiting forever for a silent server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from chains.llm import ModelTimeoutError, idle_limited, make_chat_model, unavailable_reason, within
from config import load_settings

URL = "http://127.0.0.1:9/v1"
_REQUEST = httpx.Request("POST", URL)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (openai.APIConnectionError(request=_REQUEST), "cannot reach the model server"),
        (openai.APITimeoutError(request=_REQUEST), "timed out"),
        (
            openai.InternalServerError("boom", response=httpx.Response(503, request=_REQUEST), body=None),
            "HTTP 503",
        ),
        (ModelTimeoutError("the model server sent nothing for 2 s"), "sent nothing for 2 s"),
    ],
)
def test_outages_are_recognised(exc: BaseException, expected: str) -> None:
    reason = unavailable_reason(exc, URL)
    assert reason is not None and expected in reason


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("a bug"),
        openai.NotFoundError("no such model", response=httpx.Response(404, request=_REQUEST), body=None),
    ],
)
def test_bugs_and_client_errors_are_not_outages(exc: BaseException) -> None:
    assert unavailable_reason(exc, URL) is None


async def test_within_raises_model_timeout() -> None:
    start = time.perf_counter()
    with pytest.raises(ModelTimeoutError, match=r"nothing for 0\.2 s"):
        await within(asyncio.sleep(5), 0.2)
    assert time.perf_counter() - start < 2


async def test_idle_limit_cuts_a_silent_stream_but_not_a_busy_one() -> None:
    closed: list[bool] = []

    async def events(gap: float, n: int) -> AsyncIterator[int]:
        try:
            for i in range(n):
                await asyncio.sleep(gap)
                yield i
        finally:
            closed.append(True)

    assert [x async for x in idle_limited(events(0.01, 30), 0.2)] == list(range(30))
    got = []
    with pytest.raises(ModelTimeoutError):
        async for x in idle_limited(events(1.0, 3), 0.1):
            got.append(x)
    assert got == []
    assert closed == [True, True]


def test_chat_model_is_built_from_settings() -> None:
    settings = load_settings("test", llm={"base_url": URL, "model": "m1", "request_timeout_s": 7, "max_retries": 0})
    model = make_chat_model(settings.llm)
    assert model.openai_api_base == URL and model.model_name == "m1"
    assert model.request_timeout == 7 and model.max_retries == 0
    assert model.streaming and model.stream_usage


@pytest.mark.parametrize(("interval", "body"), [(4, {"stream_interval": 4}), (1, None)])
def test_stream_interval_goes_in_the_request_body_only_above_one(interval: int, body: Any) -> None:
    settings = load_settings("test", llm={"base_url": URL, "model": "m1", "stream_interval": interval})
    assert make_chat_model(settings.llm).extra_body == body
