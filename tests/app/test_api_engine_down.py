"""With the model server down, the API still answers (retrieval-only, with sources) and /health
says 503 naming the engine; nothing hangs. Real index and cache; no engine on purpose. Runs in
both modes: in shared mode /health checks the Chroma server and the PostgreSQL cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.store import store_url
from config import load_settings
from serving.launch import free_port
from tests.app.api_server import API_KEY, start_api
from tests.app.replicas import ApiUnderTest, front_of, replica_pair
from tests.llm_server import LLMServer

pytestmark = [pytest.mark.integration]


@pytest.fixture
def engine_down_api(api_mode: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ApiUnderTest]:
    """The mode's index, built first by the mode's API (`api`), under an API whose engine is a closed port."""
    api: ApiUnderTest = request.getfixturevalue("api")
    dead = f"http://127.0.0.1:{free_port()}/v1"
    if api.mode == "shared":
        shared = request.getfixturevalue("shared")
        slow = {"RAG_LLM__REQUEST_TIMEOUT_S": "5"}
        with replica_pair(shared, LLMServer(dead, "rag-model"), "down-", slow) as pair, front_of(shared, pair) as down:
            yield down
        return
    from app.api import create_app

    api_settings = request.getfixturevalue("api_settings")
    settings = load_settings(
        "test",
        index=api_settings.index.model_dump(),
        llm={"base_url": dead, "model": "rag-model", "request_timeout_s": 5},
        chains={"conversations_db": tmp_path / "conversations.sqlite"},
        cache={"dir": tmp_path / "cache"},
        api={"store_db": tmp_path / "app.sqlite"},  # no key: the API is open without one
    )
    running = start_api(create_app(settings))
    try:
        yield ApiUnderTest("embedded", running.url, settings.index.docs_dir, store_url(settings))
    finally:
        running.stop()


def test_engine_down_gives_retrieval_only_answers_and_503_health(engine_down_api: ApiUnderTest) -> None:
    for _ in range(2):  # in shared mode, once on each replica
        health = httpx.get(f"{engine_down_api.url}/health", timeout=30)
        assert health.status_code == 503
        body = health.json()
        assert body["failing"] == ["engine"] and "cannot reach the model server" in body["engine"]["detail"]
        assert body["index"]["ok"] and body["cache"]["ok"]
    for _ in range(2):
        response = httpx.post(
            f"{engine_down_api.base_url}/chat/completions",
            json={"messages": [{"role": "user", "content": "How do I add documents?"}]},
            headers={"Authorization": f"Bearer {API_KEY}"},  # ignored where no key is set
            timeout=60,
        )
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["retrieval_only"] is True and answer["sources"]
        assert any("retrieval only" in n for n in answer["notices"])
