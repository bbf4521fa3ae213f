"""Request and response shapes of the OpenAI-compatible chat API, with our RAG extensions.

The extensions sit beside the OpenAI fields, so any OpenAI client parses them (as extra fields):
`retrieved` (the passages given to the model) on the first streamed chunk, and `sources` (the
cited ones), `timings`, `cached`, `retrieval_only`, `notices`, `conversation_id`, `turn_id` on
the final chunk and on the non-streamed response. The cited sources are also OpenAI
`annotations` of type `url_citation`, which generic OpenAI front ends render. docs/api.md
documents all of it.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field

from app.store import MAX_COMMENT_CHARS
from chains import Source, TurnResult


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content if part.type in ("text", "input_text"))


class ChatRequest(BaseModel):
    """`POST /v1/chat/completions`. Unknown OpenAI fields (`n`, `top_p`, `user`, ...) are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    conversation_id: str | None = Field(None, min_length=1, max_length=128)
    """Our extension: continue a stored conversation (same as the `X-Conversation-Id` header)."""
    use_cache: bool = True
    """Our extension: false skips the semantic cache for this request."""
    top_k: int | None = Field(None, ge=1, le=100)
    """Our extension: passages to retrieve (default `index.top_k`)."""

    def question(self) -> str:
        """The last user message; it must be the last message with text."""
        users = [m for m in self.messages if m.role == "user"]
        if not users or self.messages[-1].role != "user":
            raise ValueError("the last message must be the user's question (role 'user')")
        return users[-1].text()

    def history(self) -> list[tuple[str, str]]:
        """Earlier user/assistant messages, for clients that keep the conversation themselves."""
        return [(m.role, m.text()) for m in self.messages[:-1] if m.role in ("user", "assistant")]


def source_url(source: Source) -> str:
    """Where the cited document can be fetched from this API (`GET /v1/documents/{path}`)."""
    page = f"#page={source.page}" if source.page else ""
    return f"/v1/documents/{quote(source.file)}{page}"


def source_json(source: Source) -> dict[str, Any]:
    data = dataclasses.asdict(source)
    data["label"] = source.label()
    data["url"] = source_url(source)
    return data


def url_citations(answer: str, sources: tuple[Source, ...] | list[Source]) -> list[dict[str, Any]]:
    """OpenAI `url_citation` annotations: one per cited source, spanning its first `[n]` marker
    (0..0 when the answer cites nothing explicitly and the sources are the ones it was given)."""
    result = []
    for source in sources:
        marker = f"[{source.id}]"
        start = answer.find(marker)
        start, end = (start, start + len(marker)) if start >= 0 else (0, 0)
        result.append(
            {
                "type": "url_citation",
                "url_citation": {
                    "url": source_url(source),
                    "title": source.label(),
                    "start_index": start,
                    "end_index": end,
                },
            }
        )
    return result


def usage_json(result: TurnResult) -> dict[str, int]:
    prompt, completion = result.tokens.prompt_tokens, result.tokens.completion_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class FeedbackRequest(BaseModel):
    """`POST /v1/feedback`: a rating of one stored turn (ids as the chat response returned them)."""

    model_config = ConfigDict(extra="forbid")

    conversation_id: str = Field(min_length=1, max_length=200)
    turn_id: str = Field(min_length=1, max_length=200)
    score: Literal[1, -1]
    """+1 thumbs up, -1 thumbs down."""
    comment: str | None = Field(None, max_length=MAX_COMMENT_CHARS)


def rag_fields(result: TurnResult, turn_id: str) -> dict[str, Any]:
    """Our extension fields of the final chunk and the non-streamed response."""
    return {
        "conversation_id": result.conversation_id,
        "turn_id": turn_id,
        "sources": [source_json(s) for s in result.sources],
        "cached": result.cached,
        "retrieval_only": result.retrieval_only,
        "timings": dataclasses.asdict(result.timings),
        "notices": list(result.notices),
    }


def completion_json(result: TurnResult, completion_id: str, turn_id: str, model: str) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": result.answer,
                    "annotations": url_citations(result.answer, result.sources),
                },
                "finish_reason": "stop",
            }
        ],
        "usage": usage_json(result),
        **rag_fields(result, turn_id),
    }


def chunk_json(completion_id: str, model: str, delta: dict[str, Any], **extra: Any) -> dict[str, Any]:
    finish = extra.pop("finish_reason", None)
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }


def error_json(message: str, kind: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """The OpenAI error body, which the openai client turns into its typed exceptions."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
