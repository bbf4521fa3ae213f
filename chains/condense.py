"""The standalone-question step: a follow-up rewritten with the history before retrieval and cache.

The rewrite request repeats the answer call's layout (system prompt, tool schema, stored history)
and adds one instruction message, so on vLLM it costs a prefill of that message and little else.
"""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool

from chains.prompts import CONDENSE_TEMPLATE, SYSTEM_PROMPT
from chains.tokens import approx_tokens, truncate_to_tokens

REWRITE_EXTRA_TOKENS = 48


def is_summary(message: BaseMessage) -> bool:
    """True for the running-summary message the summary memory puts first in the history."""
    return message.additional_kwargs.get("lc_source") == "summarization"


def has_turns(history: Sequence[BaseMessage]) -> bool:
    """Whether there is anything to condense against (a question or a summary)."""
    return any(isinstance(m, HumanMessage) for m in history)


async def condense_question(
    model: BaseChatModel,
    tools: Sequence[BaseTool],
    history: Sequence[BaseMessage],
    question: str,
    *,
    max_question_tokens: int,
    config: RunnableConfig | None = None,
) -> str:
    """The model's self-contained version of `question` (its first non-empty line; "" when it gave
    none). The caller checks it (`chains.followups.rejection`) before using it.

    `tools` are offered but may not be called (`tool_choice="none"`): they are part of the prompt
    prefix the answer call uses. The rewrite may add the subject the follow-up refers to, so its
    length is capped at twice the follow-up plus a short subject: a model that rambles stops early.
    """
    messages = [SystemMessage(SYSTEM_PROMPT), *history, HumanMessage(CONDENSE_TEMPLATE.format(question=question))]
    limit = min(max_question_tokens, 2 * approx_tokens(question) + REWRITE_EXTRA_TOKENS)
    bound = model.bind_tools(list(tools), tool_choice="none") if tools else model
    response = await bound.ainvoke(messages, config=config, max_tokens=limit)
    lines = [line.strip().strip("\"'") for line in response.text.splitlines()]
    standalone = next((line for line in lines if line), "")
    return truncate_to_tokens(standalone, max_question_tokens)
