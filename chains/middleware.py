"""Agent middleware, one job each: attach prefetched passages, keep history within a token
budget, bound the tool loop, and time the agent loop's steps."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, cast

from langchain.agents.middleware import (
    AgentMiddleware,
    AgentState,
    ModelRequest,
    ModelResponse,
    SummarizationMiddleware,
    ToolCallRequest,
)
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AnyMessage, HumanMessage, ToolMessage
from langchain_core.messages.utils import count_tokens_approximately
from langgraph.runtime import Runtime
from langgraph.types import Command

from chains.context import TurnContext
from chains.prompts import SUMMARY_PROMPT, question_with_context
from chains.results import Step

ModelHandler = Callable[[ModelRequest[TurnContext]], Awaitable[ModelResponse[Any]]]
ToolHandler = Callable[[ToolCallRequest], Awaitable[ToolMessage | Command[Any]]]


class ContextPrefetchMiddleware(AgentMiddleware[AgentState[Any], TurnContext, Any]):
    """Puts the turn's prefetched passages in front of its question on every model call, so the
    first call can answer without a tool round trip. Only the request changes: the stored
    history keeps the bare question, which keeps later prompts short and their prefixes stable."""

    async def awrap_model_call(self, request: ModelRequest[TurnContext], handler: ModelHandler) -> Any:
        turn = request.runtime.context
        messages: list[AnyMessage] = [
            HumanMessage(content=question_with_context(turn.context, m.text), id=m.id)
            if m.id == turn.question_id
            else m
            for m in request.messages
        ]
        settings = {**request.model_settings, **turn.model_settings}
        return await handler(request.override(messages=messages, model_settings=settings))


class SummaryMemoryMiddleware(SummarizationMiddleware[Any, TurnContext]):
    """LangChain's summarization, run only when a turn starts (its question is the last message),
    so the question itself and the turn's tool exchanges are never summarised away.

    The budget applies to the stored history alone. LangChain would also trigger on the token
    usage the server reported for the last call, but that counts the system prompt, the tool
    schema and the turn's passages, none of which is history: it would summarise on every turn
    and break the prompt prefix vLLM caches.
    """

    def __init__(self, model: BaseChatModel, *, history_token_budget: int, keep_last_messages: int) -> None:
        super().__init__(
            model,
            trigger=("tokens", history_token_budget),
            # +1: the current question is always among the kept messages.
            keep=("messages", keep_last_messages + 1),
            token_counter=partial(count_tokens_approximately, use_usage_metadata_scaling=False),
            summary_prompt=SUMMARY_PROMPT,
            trim_tokens_to_summarize=2 * history_token_budget,
        )

    def _should_summarize_based_on_reported_tokens(self, messages: list[AnyMessage], threshold: float) -> bool:
        return False

    async def abefore_model(self, state: AgentState[Any], runtime: Runtime[TurnContext]) -> dict[str, Any] | None:
        messages = state["messages"]
        if not messages or messages[-1].id != runtime.context.question_id:
            return None
        return await super().abefore_model(state, runtime)


class SearchBudgetMiddleware(AgentMiddleware[AgentState[Any], TurnContext, Any]):
    """Takes the tools away on the turn's last allowed model call, so every turn ends with an
    answer instead of another search."""

    def __init__(self, max_model_calls: int) -> None:
        super().__init__()
        self._max_model_calls = max_model_calls

    async def awrap_model_call(self, request: ModelRequest[TurnContext], handler: ModelHandler) -> Any:
        turn = request.runtime.context
        turn.model_calls += 1
        if turn.model_calls >= self._max_model_calls:
            request = request.override(tools=[], tool_choice=None)
        return await handler(request)


class TimingMiddleware(AgentMiddleware[AgentState[Any], TurnContext, Any]):
    """Records each model and tool call of the agent loop, in order, with its wall time."""

    async def awrap_model_call(self, request: ModelRequest[TurnContext], handler: ModelHandler) -> Any:
        start = time.perf_counter()
        try:
            return await handler(request)
        finally:
            request.runtime.context.trace.steps.append(Step("model", "model", time.perf_counter() - start))

    async def awrap_tool_call(self, request: ToolCallRequest, handler: ToolHandler) -> ToolMessage | Command[Any]:
        start = time.perf_counter()
        try:
            return await handler(request)
        finally:
            turn = cast(TurnContext, request.runtime.context)
            turn.trace.steps.append(Step("tool", request.tool_call["name"], time.perf_counter() - start))
