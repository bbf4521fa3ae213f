"""The agent's private event loop: sync and async callers, early-closed streams, misuse."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from chains.loop_thread import LoopThread


@pytest.fixture
def runner() -> Iterator[LoopThread]:
    loop = LoopThread("test-loop")
    yield loop
    loop.close()


async def _double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


def test_run_from_a_plain_thread(runner: LoopThread) -> None:
    assert runner.run(_double(21)) == 42


async def test_arun_from_another_event_loop(runner: LoopThread) -> None:
    results = await asyncio.gather(*(runner.arun(_double(i)) for i in range(5)))
    assert results == [0, 2, 4, 6, 8]


def test_iterate_closes_the_source_when_the_caller_stops_early(runner: LoopThread) -> None:
    closed: list[bool] = []

    async def numbers() -> AsyncIterator[int]:
        try:
            for i in range(100):
                yield i
        finally:
            closed.append(True)

    taken = []
    stream = runner.iterate(numbers())
    for value in stream:
        taken.append(value)
        if value == 2:
            break
    stream.close()  # type: ignore[attr-defined]
    assert taken == [0, 1, 2]
    assert closed == [True]


async def test_aiterate_yields_everything(runner: LoopThread) -> None:
    async def numbers() -> AsyncIterator[int]:
        for i in range(4):
            await asyncio.sleep(0)
            yield i

    assert [x async for x in runner.aiterate(numbers())] == [0, 1, 2, 3]


def test_errors_reach_the_caller(runner: LoopThread) -> None:
    async def boom() -> None:
        raise ValueError("inside")

    with pytest.raises(ValueError, match="inside"):
        runner.run(boom())


def test_run_from_its_own_loop_is_refused(runner: LoopThread) -> None:
    async def nested() -> int:
        return runner.run(_double(1))

    with pytest.raises(RuntimeError, match="own loop"):
        runner.run(nested())


def test_close_is_idempotent() -> None:
    loop = LoopThread("closing")
    loop.close()
    loop.close()
    assert loop.closed


async def test_aiterate_cancelled_mid_step_delivers_the_cancellation(runner: LoopThread) -> None:
    """A consumer cancelled while the source awaits (a client gone, Stop pressed) must see
    CancelledError, not a RuntimeError from closing a generator that is still unwinding."""
    started = asyncio.Event()
    outcome: list[str] = []

    async def slow() -> AsyncIterator[int]:
        try:
            await asyncio.sleep(30)
            yield 1
        except asyncio.CancelledError:
            await asyncio.sleep(0.2)  # cleanup takes a moment, like closing an HTTP stream
            outcome.append("source cancelled")
            raise

    async def consume() -> None:
        try:
            items = runner.aiterate(slow())
            step = asyncio.ensure_future(anext(items))
            started.set()
            await step
        except asyncio.CancelledError:
            outcome.append("consumer cancelled")
            raise

    task = asyncio.ensure_future(consume())
    await started.wait()
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert outcome == ["source cancelled", "consumer cancelled"]
