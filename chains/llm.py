"""The chat model over HTTP, and how its failures are told apart from bugs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import Any, TypeVar

import httpx
import openai
from langchain_openai import ChatOpenAI

from config.settings import LLMSettings

T = TypeVar("T")


class ModelTimeoutError(TimeoutError):
    """The model server accepted the request but sent nothing for too long."""


def endpoint(llm: LLMSettings) -> tuple[str, str]:
    """(base URL, model name); `Settings` fills both in from the serving section when unset."""
    if llm.base_url is None or llm.model is None:
        raise ValueError("llm.base_url and llm.model are unset: build settings with config.load_settings()")
    return llm.base_url, llm.model


async def served_chars_per_token(base_url: str, model: str, sample: str, timeout_s: float = 2.0) -> float | None:
    """Characters per token of the served model's tokenizer on `sample`, from vLLM's `/tokenize`
    route; None when the server cannot say (down, or an OpenAI-compatible server without it).

    Prompt budgets are counted in estimated tokens (`chains.tokens`); a model whose tokenizer
    packs fewer characters per token than the estimate would otherwise overflow its window."""
    root = base_url.rstrip("/").removesuffix("/v1")
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            response = await client.post(f"{root}/tokenize", json={"model": model, "prompt": sample})
            count = int(response.raise_for_status().json()["count"])
    except (httpx.HTTPError, KeyError, TypeError, ValueError):
        return None
    return len(sample) / count if count > 0 else None


def make_chat_model(llm: LLMSettings) -> ChatOpenAI:
    """ChatOpenAI against the vLLM (or any OpenAI-compatible) server, streaming with usage.

    It gets its own async HTTP client: langchain-openai otherwise shares one per process, whose
    pooled connections stay bound to the event loop of whoever used them first. vLLM's
    `stream_interval` goes in the request body only when it changes anything (> 1), so a server
    that rejects unknown fields still works at 1; `llm.extra_body` goes there as given. No
    per-chunk timeout of langchain-openai's own: cancelling a turn must cancel its request.
    """
    base_url, model = endpoint(llm)
    return ChatOpenAI(
        http_async_client=openai.DefaultAsyncHttpxClient(),
        base_url=base_url,
        api_key=llm.api_key,
        model=model,
        temperature=llm.temperature,
        max_completion_tokens=llm.max_tokens,
        timeout=llm.request_timeout_s,
        max_retries=llm.max_retries,
        streaming=True,
        stream_usage=True,
        # Off: it wraps every chunk in asyncio.wait_for, which on Python 3.11 swallows a cancellation
        # that arrives when the next chunk is already there (CPython bpo-42130, fixed in 3.12), so a
        # stopped turn kept streaming its answer to the end. `idle_limited` bounds silences instead.
        stream_chunk_timeout=None,
        extra_body=_extra_body(llm) or None,
    )


def _extra_body(llm: LLMSettings) -> dict[str, Any]:
    """`llm.extra_body`, plus vLLM's `stream_interval` when it changes anything (> 1)."""
    return {**llm.extra_body, **({"stream_interval": llm.stream_interval} if llm.stream_interval > 1 else {})}


def unavailable_reason(exc: BaseException, base_url: str) -> str | None:
    """A one-line reason when `exc` means the model server cannot answer now, else None."""
    if isinstance(exc, ModelTimeoutError):
        return str(exc)
    if isinstance(exc, openai.APITimeoutError):
        return f"the model server at {base_url} timed out"
    if isinstance(exc, openai.APIConnectionError):
        return f"cannot reach the model server at {base_url}"
    if isinstance(exc, openai.APIStatusError) and exc.status_code >= 500:
        return f"the model server at {base_url} failed with HTTP {exc.status_code}"
    return None


async def within(awaitable: Awaitable[T], seconds: float) -> T:
    """`awaitable`'s result, or ModelTimeoutError after `seconds`."""
    try:
        async with asyncio.timeout(seconds):  # unlike wait_for on 3.11, no task per call (one per streamed token)
            return await awaitable
    except TimeoutError:
        raise ModelTimeoutError(f"the model server sent nothing for {seconds:g} s") from None


async def idle_limited(events: AsyncIterator[T], seconds: float) -> AsyncGenerator[T]:
    """`events`, failing with ModelTimeoutError when none arrives for `seconds`; a long answer
    that keeps streaming is never cut."""
    iterator = aiter(events)
    try:
        while True:
            try:
                item = await within(anext(iterator), seconds)
            except StopAsyncIteration:
                return
            yield item
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()
