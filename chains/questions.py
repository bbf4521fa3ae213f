"""Checks on what callers pass in: the question text and the conversation id."""

from __future__ import annotations

import re
import uuid

from chains.tokens import approx_tokens, truncate_to_tokens

_CONVERSATION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
"""Control characters but tab, newline and carriage return: NUL bytes and terminal escapes are
never part of a question, and they would reach the stores, the logs and the model."""


class QuestionError(ValueError):
    """The question or conversation id cannot be answered as given; the message says why."""


def prepare_question(question: object, max_tokens: int) -> tuple[str, list[str]]:
    """The question to answer plus notices; control characters are removed and over-long
    questions cut rather than refused."""
    if not isinstance(question, str):
        raise QuestionError(f"question must be a string, got {type(question).__name__}")
    text, removed = _CONTROL.subn("", question)
    text = text.strip()
    if not text:
        raise QuestionError("question is empty: ask something")
    notices = [f"removed {removed} control character(s) from the question"] if removed else []
    tokens = approx_tokens(text)
    if tokens <= max_tokens:
        return text, notices
    notices.append(f"question truncated from about {tokens} to {max_tokens} tokens (chains.max_question_tokens)")
    return truncate_to_tokens(text, max_tokens), notices


def conversation_id_or_new(conversation_id: str | None) -> str:
    """A validated id; None starts a new conversation."""
    if conversation_id is None:
        return uuid.uuid4().hex
    if not isinstance(conversation_id, str) or not _CONVERSATION_ID.match(conversation_id):
        raise QuestionError(
            f"conversation id {conversation_id!r} is invalid: use 1-128 letters, digits, '.', '_', ':' or '-'"
        )
    return conversation_id
