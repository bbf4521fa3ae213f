"""Property-based tests of the API request models: any JSON body is either refused by validation
(a 400 naming the field) or gives a question that the chains accept or refuse with QuestionError,
never another exception (hypothesis, bounded). Also: sanitised upload names are always safe."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from app.api_schema import ChatRequest
from app.documents import MAX_NAME_CHARS, sanitise_name
from chains.questions import QuestionError, conversation_id_or_new, prepare_question

BOUNDED = settings(max_examples=150, deadline=timedelta(seconds=5), database=None, print_blob=True)
FIELDS = ["model", "messages", "stream", "max_tokens", "max_completion_tokens", "temperature", "conversation_id",
          "use_cache", "top_k", "role", "content", "type", "text", "user", "n"]  # fmt: skip

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=50)
keys = st.sampled_from(FIELDS) | st.text(max_size=8)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5), max_leaves=20
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "developer", "user", "assistant", "tool", "wizard"])},
        optional={
            "content": st.text(max_size=200)
            | st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]), "text": st.text()})),
        },
    ),
    max_size=5,
)
requests = st.fixed_dictionaries(
    {"messages": messages},
    optional={k: json_values for k in ("stream", "max_tokens", "temperature", "conversation_id", "top_k", "use_cache")},
)


def _check(body: Any) -> None:
    try:
        request = ChatRequest.model_validate(body)
    except ValidationError as exc:
        assert exc.errors(), "a refusal names what is wrong"
        return
    assert isinstance(request.history(), list)
    try:
        question = request.question()
    except ValueError as exc:
        assert "user" in str(exc)
        return
    try:
        text, _ = prepare_question(question, 64)
    except QuestionError as exc:
        assert "empty" in str(exc)
        return
    assert text and text == text.strip()
    assert not any(ord(c) < 32 and c not in "\t\n\r" for c in text), "control characters never pass"
    if request.conversation_id is not None:
        try:
            assert conversation_id_or_new(request.conversation_id) == request.conversation_id
        except QuestionError as exc:
            assert "conversation id" in str(exc)


@BOUNDED
@given(body=json_values)
def test_any_json_body_is_refused_by_validation_or_answerable(body: Any) -> None:
    _check(body)


@BOUNDED
@given(body=requests)
def test_chat_shaped_bodies_are_refused_by_validation_or_answerable(body: dict[str, Any]) -> None:
    _check(body)


@BOUNDED
@given(name=st.text(max_size=400))
def test_sanitised_upload_names_are_always_safe(name: str) -> None:
    safe = sanitise_name(name)
    assert safe and len(safe) <= MAX_NAME_CHARS
    assert "/" not in safe and "\\" not in safe and "\x00" not in safe
    assert not safe.startswith(".") and safe not in ("..", ".")
    assert all(c.isascii() and (c.isalnum() or c in "._- ") for c in safe), safe
