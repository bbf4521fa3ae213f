"""The stream pump behind the UI's Stop button: idle waits call the checkpoint, closing cancels
the turn where it waits (before the first piece too) and waits until it has unwound."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator

import pytest

from app.ui_stream import AnswerStream
from chains.loop_thread import LoopThread


class RerunRequestedError(Exception):
    """What Streamlit raises at a checkpoint when a rerun (a Stop click) is pending."""


@pytest.fixture
def runner() -> Iterator[LoopThread]:
    loop = LoopThread(name="test-ui-stream")
    yield loop
    loop.close()


class Turn:
    """An async answer that records how it ended, like the service storing a stopped turn."""

    def __init__(self, pieces: list[str], first_delay_s: float = 0.0, delay_s: float = 0.0) -> None:
        self.pieces, self.first_delay_s, self.delay_s = pieces, first_delay_s, delay_s
        self.ended = threading.Event()
        self.outcome = ""

    async def run(self) -> AsyncIterator[str]:
        try:
            await asyncio.sleep(self.first_delay_s)
            for index, piece in enumerate(self.pieces):
                if index:
                    await asyncio.sleep(self.delay_s)
                yield piece
            self.outcome = "finished"
        except asyncio.CancelledError:
            self.outcome = "cancelled"
            raise
        except GeneratorExit:
            self.outcome = "closed"
            raise
        finally:
            self.ended.set()


def test_a_turn_read_to_the_end_yields_every_piece(runner: LoopThread) -> None:
    turn = Turn(["a", "b", "c"], first_delay_s=0.05)
    ticks: list[int] = []
    stream = AnswerStream(turn.run(), runner, checkpoint=lambda: ticks.append(1), tick_s=0.01)
    assert list(stream) == ["a", "b", "c"]
    assert turn.outcome == "finished"
    assert ticks, "waiting for the first piece must pass through the checkpoint"


def test_stop_before_the_first_piece_cancels_the_waiting_turn(runner: LoopThread) -> None:
    turn = Turn(["never"], first_delay_s=30.0)

    def checkpoint() -> None:
        raise RerunRequestedError

    stream = AnswerStream(turn.run(), runner, checkpoint=checkpoint, tick_s=0.01)
    with pytest.raises(RerunRequestedError):
        try:
            list(stream)
        finally:
            stream.close()
    assert turn.ended.is_set(), "close() must return only once the turn has unwound"
    assert turn.outcome == "cancelled"


def test_stop_mid_answer_keeps_what_came_and_ends_the_turn(runner: LoopThread) -> None:
    turn = Turn([f"t{i} " for i in range(1000)], delay_s=0.005)
    received: list[str] = []
    stream = AnswerStream(turn.run(), runner, checkpoint=lambda: None, tick_s=0.001)
    for piece in stream:
        received.append(piece)
        if len(received) == 3:
            break
    stream.close()
    assert received == ["t0 ", "t1 ", "t2 "]
    assert turn.ended.is_set()
    assert turn.outcome in {"cancelled", "closed"}


def test_close_is_idempotent_and_safe_after_the_end(runner: LoopThread) -> None:
    turn = Turn(["x"])
    stream = AnswerStream(turn.run(), runner, checkpoint=lambda: None)
    assert list(stream) == ["x"]
    stream.close()
    stream.close()
    assert turn.outcome == "finished"


def test_an_error_in_the_turn_reaches_the_reader(runner: LoopThread) -> None:
    async def failing() -> AsyncIterator[str]:
        yield "partial"
        raise ValueError("question is empty: ask something")

    stream = AnswerStream(failing(), runner, checkpoint=lambda: None)
    received = []
    with pytest.raises(ValueError, match="question is empty"):
        for piece in stream:
            received.append(piece)
    assert received == ["partial"]


def test_another_thread_can_wait_for_a_stopped_stream_to_be_closed(runner: LoopThread) -> None:
    """A Stop click starts the next script run in a new thread while the stopped one unwinds."""
    turn = Turn(["never"], first_delay_s=30.0)
    ticks: list[int] = []

    def checkpoint() -> None:
        ticks.append(1)
        if len(ticks) == 3:
            raise RerunRequestedError

    stream = AnswerStream(turn.run(), runner, checkpoint=checkpoint, tick_s=0.01)

    def script_run() -> None:
        try:
            list(stream)
        except RerunRequestedError:
            pass
        finally:
            stream.close()

    assert not stream.wait_closed(0.01)
    stopped_run = threading.Thread(target=script_run)
    stopped_run.start()
    assert stream.wait_closed(10)
    assert turn.ended.is_set(), "waiting returns only once the turn has unwound"
    assert turn.outcome == "cancelled"
    stopped_run.join()
