"""`llm.extra_body`: server-specific request fields, from YAML or the environment, never the client's own."""

from __future__ import annotations

import pytest

from chains.llm import make_chat_model
from config import SettingsError, load_settings


def test_extra_body_reaches_the_request_with_stream_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_LLM__EXTRA_BODY", '{"ignore_eos": true, "repetition_penalty": 1.1}')
    settings = load_settings("test")
    assert settings.llm.extra_body == {"ignore_eos": True, "repetition_penalty": 1.1}
    body = make_chat_model(settings.llm).extra_body
    assert body == {"ignore_eos": True, "repetition_penalty": 1.1, "stream_interval": settings.llm.stream_interval}


def test_extra_body_is_empty_by_default_and_stream_interval_one_sends_nothing() -> None:
    settings = load_settings("test", llm={"stream_interval": 1})
    assert settings.llm.extra_body == {}
    assert make_chat_model(settings.llm).extra_body is None


@pytest.mark.parametrize(
    "field", ["model", "messages", "stream", "max_tokens", "temperature", "tools", "stream_interval"]
)
def test_extra_body_cannot_override_what_the_client_sets(field: str) -> None:
    with pytest.raises(SettingsError, match=f"llm.extra_body must not set {field}"):
        load_settings("test", llm={"extra_body": {field: 1}})


def test_extra_body_is_bounded() -> None:
    with pytest.raises(SettingsError, match="extra_body"):
        load_settings("test", llm={"extra_body": {f"field_{i}": i for i in range(33)}})
