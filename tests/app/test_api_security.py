"""No secrets in logs, loopback by default, CORS off by default: against real API servers over
the session's real service (index, cache, engine)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from app.redaction import REDACTED, redact
from config.settings import Settings
from tests.app.api_server import start_api
from tests.app.replicas import ApiUnderTest

API_SECRET = "sk-test-SECRET-4c1f9a77e0"
LLM_SECRET = "llm-SECRET-77aa90b1"
WRONG_KEY = "sk-test-WRONG-1234abcd"


class Capture(logging.Handler):
    """Every record any logger emits, formatted as a handler would write it (message and traceback)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def captured() -> Iterator[Capture]:
    """A handler on the root logger and on uvicorn's own (which do not propagate), at DEBUG."""
    capture = Capture()
    loggers = [logging.getLogger(name) for name in ("", "uvicorn", "uvicorn.access", "uvicorn.error")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(capture)
        lg.setLevel(logging.DEBUG)
    try:
        yield capture
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(capture)
            lg.setLevel(level)


@pytest.mark.integration
def test_keys_never_reach_the_logs(api_settings: Settings, chat_service: Any, captured: Capture) -> None:
    """A server of its own (API key and model-server key set, cache off) logging at DEBUG, asked with
    the key, a wrong key, no key, the key in the URL and in another header: no line holds a key."""
    from app.api import create_app

    settings = api_settings.model_copy(
        update={
            "api": api_settings.api.model_copy(update={"api_key": SecretStr(API_SECRET)}),
            "llm": api_settings.llm.model_copy(update={"api_key": SecretStr(LLM_SECRET)}),
            "cache": api_settings.cache.model_copy(update={"enabled": False}),
        }
    )
    running = start_api(create_app(settings), log_level="debug")
    try:
        url = running.base_url
        good = {"Authorization": f"Bearer {API_SECRET}"}
        body = {"messages": [{"role": "user", "content": "Which file formats can it read?"}], "max_tokens": 8}
        assert httpx.post(f"{url}/chat/completions", json=body, headers=good, timeout=120).status_code == 200
        assert httpx.get(f"{url}/models", headers=good, timeout=30).status_code == 200
        assert httpx.get(f"{url}/models", headers={"Authorization": f"Bearer {WRONG_KEY}"}).status_code == 401
        assert httpx.get(f"{url}/models", timeout=30).status_code == 401
        assert httpx.get(f"{url}/models", params={"api_key": API_SECRET}, timeout=30).status_code == 401
        assert httpx.get(f"{url}/models", headers={"X-Api-Key": API_SECRET}, timeout=30).status_code == 401
        assert httpx.get(f"{running.url}/health", timeout=30).status_code == 200
        logging.getLogger("test").warning("client sent Authorization: Bearer %s", WRONG_KEY)
    finally:
        running.stop()
    text = "\n".join(captured.lines)
    assert "/v1/chat/completions" in text and "/v1/models" in text, "the access log was captured"
    assert f"api_key={REDACTED}" in text, "the key put in a URL was logged, redacted"
    for secret in (API_SECRET, LLM_SECRET, WRONG_KEY):
        leaked = [line for line in captured.lines if secret in line]
        assert leaked == [], f"{secret!r} appears in {len(leaked)} log lines, e.g. {leaked[:1]}"


def test_redaction_covers_bearer_tokens_tenant_keys_and_query_keys() -> None:
    text = "GET /v1/x?api_key=abc123&q=1 Authorization: Bearer sk-live-xyz, key rag_AbCdEfGhIjKlMnOpQrSt"
    assert redact(text) == f"GET /v1/x?api_key={REDACTED}&q=1 Authorization: Bearer {REDACTED}, key {REDACTED}"
    assert redact("How do I add my own documents?") == "How do I add my own documents?"


@pytest.mark.integration
@pytest.mark.per_process  # CORS is each process's own middleware setting
def test_cors_is_off_by_default_and_on_only_for_configured_origins(
    api: ApiUnderTest, api_settings: Settings, chat_service: Any
) -> None:
    from app.api import create_app

    preflight = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    response = httpx.options(f"{api.base_url}/chat/completions", headers=preflight, timeout=30)
    assert "access-control-allow-origin" not in response.headers
    response = httpx.get(f"{api.url}/health", headers={"Origin": "http://evil.example"}, timeout=30)
    assert "access-control-allow-origin" not in response.headers

    settings = api_settings.model_copy(deep=True)
    settings.api.cors_origins = ["http://ui.example"]
    running = start_api(create_app(settings, chat_service))
    try:
        allowed = {"Origin": "http://ui.example", "Access-Control-Request-Method": "POST"}
        response = httpx.options(f"{running.base_url}/chat/completions", headers=allowed, timeout=30)
        assert response.headers.get("access-control-allow-origin") == "http://ui.example"
        response = httpx.options(f"{running.base_url}/chat/completions", headers=preflight, timeout=30)
        assert response.headers.get("access-control-allow-origin") != "http://evil.example"
    finally:
        running.stop()


def test_the_api_entry_point_listens_on_loopback_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -m app.api` with default settings binds 127.0.0.1; uvicorn.run is replaced by a
    recorder here (serving for real needs the whole service; test_api_* run real servers)."""
    import uvicorn

    from app import api

    bound: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: bound.update(kwargs))
    monkeypatch.delenv("RAG_API__HOST", raising=False)
    assert api.main(["--profile", "test"]) == 0
    assert bound["host"] == "127.0.0.1"
    assert api.main(["--profile", "test", "--host", "0.0.0.0"]) == 0
    assert bound["host"] == "0.0.0.0", "exposing it takes an explicit choice"
