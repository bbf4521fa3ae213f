"""A scripted chat model for the agent's tool-call paths (the tiny served model never calls
tools, so these paths can only be driven by a fake)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import Field, model_validator

from chains import RagAgent
from chains.prompts import CONDENSE_TEMPLATE, SYSTEM_PROMPT
from config.settings import Settings


class ScriptedChatModel(GenericFakeChatModel):
    """Replies with `script` in order, records every prompt, and streams tool calls as chunks.

    `bind_tools` returns the model itself (GenericFakeChatModel's raises) and records how many
    tools each model call was offered.
    """

    script: list[Any] = Field(default_factory=list)
    """Replies in call order: a string, an AIMessage (with tool_calls to call a tool), an
    exception to raise, or a function of the prompt returning one of those."""
    calls: list[list[BaseMessage]] = Field(default_factory=list)
    tools_offered: list[int] = Field(default_factory=list)
    messages: Iterator[AIMessage | str] = Field(default_factory=lambda: iter(()))

    @model_validator(mode="after")
    def _feed(self) -> ScriptedChatModel:
        self.messages = iter(self.script)
        return self

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedChatModel:  # type: ignore[override]
        self.tools_offered.append(len(tools))
        return self

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.calls.append(list(messages))
        try:
            reply = next(self.messages)
        except StopIteration:
            raise AssertionError(f"script exhausted at call {len(self.calls)}: {messages[-1].text[:200]!r}") from None
        if callable(reply):
            reply = reply(messages)
        if isinstance(reply, BaseException):
            raise reply
        message = AIMessage(content=reply) if isinstance(reply, str) else reply
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        message = self._generate(messages, stop, run_manager, **kwargs).generations[0].message
        assert isinstance(message, AIMessage)
        if message.tool_calls:
            calls = [
                {"name": c["name"], "args": json.dumps(c["args"]), "id": c["id"], "index": i}
                for i, c in enumerate(message.tool_calls)
            ]
            yield ChatGenerationChunk(message=AIMessageChunk(content="", tool_call_chunks=calls))
            return
        for word in message.text.split(" "):
            piece = word if word == message.text.split(" ")[-1] else word + " "
            if run_manager:
                run_manager.on_llm_new_token(piece)
            yield ChatGenerationChunk(message=AIMessageChunk(content=piece))


def kind(call: list[BaseMessage]) -> str:
    """Which step of a turn a recorded model call was: condense, summary or agent."""
    first = call[0]
    if call[-1].text.startswith(CONDENSE_TEMPLATE.split("{", 1)[0]):
        return "condense"
    if first.type == "system" and first.text == SYSTEM_PROMPT:
        return "agent"
    if "<messages>" in call[-1].text:
        return "summary"
    return "other"


def tool_call(query: str, call_id: str = "call-1") -> AIMessage:
    """A scripted model reply asking for `search_documents(query)`."""
    return AIMessage("", tool_calls=[{"name": "search_documents", "args": {"query": query}, "id": call_id}])


def scripted_agent(settings: Settings, retriever: Any, script: list[Any]) -> tuple[RagAgent, ScriptedChatModel]:
    """An agent without a cache whose model replies with `script`; close it when done."""
    model = ScriptedChatModel(script=script)
    return RagAgent(settings, retriever=retriever, chat_model=model, cache=None), model
