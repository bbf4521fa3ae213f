"""Per-turn timing and token accounting, filled in by the pipeline, the middleware and a callback."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal
from uuid import UUID

from langchain_core.callbacks import AsyncCallbackHandler
from langchain_core.outputs import LLMResult

from chains.results import Step, Timings, TokenUsage

Stage = Literal["cache_lookup", "condense", "retrieval", "llm"]


@dataclass
class TurnTrace:
    """Mutable record of one turn; `timings()` and `usage()` freeze it into the result."""

    started: float = field(default_factory=time.perf_counter)
    seconds: dict[str, float] = field(default_factory=dict)
    first_text_at: float | None = None
    last_text_at: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    llm_calls: int = 0
    steps: list[Step] = field(default_factory=list)

    @contextmanager
    def stage(self, name: Stage) -> Iterator[None]:
        """Add the wall time of the block to `name` (stages may repeat within a turn)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add_seconds(name, time.perf_counter() - start)

    def add_seconds(self, name: Stage, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def mark_text(self) -> None:
        """Answer text reached the caller now."""
        now = time.perf_counter()
        if self.first_text_at is None:
            self.first_text_at = now
        self.last_text_at = now

    def timings(self) -> Timings:
        first, last = self.first_text_at, self.last_text_at
        return Timings(
            cache_lookup_s=self.seconds.get("cache_lookup", 0.0),
            condense_s=self.seconds.get("condense", 0.0),
            retrieval_s=self.seconds.get("retrieval", 0.0),
            ttft_s=None if first is None else first - self.started,
            generation_s=0.0 if first is None or last is None else last - first,
            llm_s=self.seconds.get("llm", 0.0),
            total_s=time.perf_counter() - self.started,
        )

    def usage(self) -> TokenUsage:
        return TokenUsage(self.prompt_tokens, self.completion_tokens, self.llm_calls)


class LLMCallTracer(AsyncCallbackHandler):
    """Times every model call of a turn (condense, summary, answer) and counts the tokens the
    server reports for it; attached per turn through the run config."""

    def __init__(self, trace: TurnTrace) -> None:
        self._trace = trace
        self._started: dict[UUID, float] = {}

    async def on_chat_model_start(self, serialized: dict[str, Any], messages: Any, *, run_id: UUID, **kw: Any) -> None:
        self._started[run_id] = time.perf_counter()

    async def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        self._finish(run_id)
        for generations in response.generations:
            for generation in generations:
                usage = getattr(getattr(generation, "message", None), "usage_metadata", None) or {}
                self._trace.prompt_tokens += int(usage.get("input_tokens", 0))
                self._trace.completion_tokens += int(usage.get("output_tokens", 0))
        self._trace.llm_calls += 1

    async def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._finish(run_id)

    def _finish(self, run_id: UUID) -> None:
        started = self._started.pop(run_id, None)
        if started is not None:
            self._trace.add_seconds("llm", time.perf_counter() - started)
