"""One answer streamed into the Streamlit script thread so that Stop cancels it at once.

Streamlit interrupts a running script (a Stop click is a rerun request) only when the script
touches Streamlit. A blocking wait for the next token would hold a Stop until that token came,
and a model that is slow to start (long prefill, engine timing out) would hold it for seconds.
So the turn runs on a background event loop and the script thread waits in short slices,
calling `checkpoint` between them; closing the stream cancels the turn on that loop, which
cancels the HTTP request to the model server (vLLM aborts it) and lets the service store the
partial answer marked stopped.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from typing import Generic, TypeVar, cast

from chains.loop_thread import LoopThread

T = TypeVar("T")


class _Tick:
    """Nothing arrived within one wait slice."""


TICK = _Tick()


async def with_ticks(items: AsyncIterator[T], tick_s: float) -> AsyncIterator[T | _Tick]:
    """`items`, with `TICK` yielded whenever nothing arrived for `tick_s`; closing it early
    cancels the pending step of `items` and waits until `items` has unwound."""
    step: asyncio.Future[T] | None = None
    try:
        while True:
            if step is None:
                step = asyncio.ensure_future(anext(items))
            done, _ = await asyncio.wait({step}, timeout=tick_s)
            if not done:
                yield TICK
                continue
            try:
                item = step.result()
            except StopAsyncIteration:
                return
            finally:
                step = None
            yield item
    finally:
        if step is not None and not step.done():
            step.cancel()
            await asyncio.gather(step, return_exceptions=True)
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()


class AnswerStream(Generic[T]):
    """Iterate for the turn's pieces (text, then the result object); `close()` stops it early.

    `checkpoint` is called in the iterating thread between wait slices: in Streamlit, anything
    that touches the session (e.g. `st.session_state.get`) raises there when a rerun is pending.
    """

    def __init__(
        self, items: AsyncIterator[T], runner: LoopThread, checkpoint: Callable[[], object], tick_s: float = 0.1
    ) -> None:
        self._steps = cast(Generator[T | _Tick], runner.iterate(with_ticks(items, tick_s)))
        self._checkpoint = checkpoint
        self._closed = threading.Event()

    def __iter__(self) -> Iterator[T]:
        for item in self._steps:
            if isinstance(item, _Tick):
                self._checkpoint()
            else:
                yield item

    def close(self) -> None:
        """Cancel the turn if it is still running and wait until it has unwound (idempotent)."""
        try:
            self._steps.close()
        finally:
            self._closed.set()

    def wait_closed(self, timeout_s: float) -> bool:
        """Block until `close()` has finished in whichever thread runs it (False on timeout)."""
        return self._closed.wait(timeout_s)
