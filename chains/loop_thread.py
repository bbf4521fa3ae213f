"""One event loop in a daemon thread that owns an agent's async resources.

The HTTP client pool, the SQLite checkpointer connection and the conversation locks are bound to
the loop they were created on. Running every turn on this one loop lets the same agent serve the
synchronous API, any caller's event loop, and many concurrent turns.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


async def _await(awaitable: Awaitable[T]) -> T:
    """A coroutine around any awaitable (`anext()` and `aclose()` return non-coroutines)."""
    return await awaitable


async def _close(items: AsyncIterator[Any]) -> None:
    """Close `items` once it is idle: a caller cancelled mid-step leaves that step unwinding on
    this loop for a moment, and `aclose()` on a running generator raises instead of closing."""
    aclose = getattr(items, "aclose", None)
    if aclose is None:
        return
    while getattr(items, "ag_running", False):
        await asyncio.sleep(0)
    await aclose()


class LoopThread:
    """Runs coroutines and async iterators on a private loop, from any thread or loop."""

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Block until `coro` has run on the private loop."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("LoopThread.run called from its own loop: await the coroutine instead")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def arun(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await `coro` run on the private loop; cancelling the caller cancels it there too."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    def iterate(self, items: AsyncIterator[T]) -> Iterator[T]:
        """Blocking iteration; closing the iterator early closes `items` on the loop."""
        try:
            while True:
                try:
                    yield self.run(_await(anext(items)))
                except StopAsyncIteration:
                    return
        finally:
            self.run(_close(items))

    async def aiterate(self, items: AsyncIterator[T]) -> AsyncIterator[T]:
        """Async iteration from another loop; closing it early closes `items` on the loop."""
        try:
            while True:
                try:
                    yield await self.arun(_await(anext(items)))
                except StopAsyncIteration:
                    return
        finally:
            # Shielded: a caller under a level-cancelled scope (anyio, as in Starlette) would cancel
            # the close before it ran, leaving `items` and its model request open until GC.
            closing = asyncio.run_coroutine_threadsafe(_close(items), self._loop)
            await asyncio.shield(asyncio.wrap_future(closing))

    @property
    def closed(self) -> bool:
        return self._loop.is_closed()

    def close(self) -> None:
        """Stop the loop and its thread (idempotent)."""
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
