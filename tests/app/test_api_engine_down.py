"""With the model server down, the API still answers (retrieval-only, with sources) and /health
says 503 naming the engine; nothing hangs. Real index and cache; no engine on purpose."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_server import RunningApi, start_api

from config import load_settings
from config.settings import Settings
from serving.launch import free_port

pytestmark = [pytest.mark.integration]


@pytest.fixture
def engine_down_api(api_settings: Settings, chat_service: Any, tmp_path: Path) -> Iterator[RunningApi]:
    """`chat_service` first: it builds the shared index this API reads."""
    from app.api import create_app

    settings = load_settings(
        "test",
        index=api_settings.index.model_dump(),
        llm={"base_url": f"http://127.0.0.1:{free_port()}/v1", "model": "rag-model", "request_timeout_s": 5},
        chains={"conversations_db": tmp_path / "conversations.sqlite"},
        cache={"dir": tmp_path / "cache"},
        api={"store_db": tmp_path / "app.sqlite"},  # no key: the API is open without one
    )
    running = start_api(create_app(settings))
    try:
        yield running
    finally:
        running.stop()


def test_engine_down_gives_retrieval_only_answers_and_503_health(engine_down_api: RunningApi) -> None:
    health = httpx.get(f"{engine_down_api.url}/health", timeout=30)
    assert health.status_code == 503
    body = health.json()
    assert body["failing"] == ["engine"] and "cannot reach the model server" in body["engine"]["detail"]
    assert body["index"]["ok"] and body["cache"]["ok"]
    response = httpx.post(
        f"{engine_down_api.base_url}/chat/completions",
        json={"messages": [{"role": "user", "content": "How do I add documents?"}]},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["retrieval_only"] is True and answer["sources"]
    assert any("retrieval only" in n for n in answer["notices"])
