"""Fixtures for the API tests: one real API server (uvicorn, loopback, free port) over a real
index of the sample user guide, the real MiniLM embedding, a real GPTCache and the session's
real vLLM server; a bearer key is set, so every test also exercises auth."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_server import API_KEY, UPLOAD_LIMIT_MB, RunningApi, start_api
from llm_server import LLMServer

from config import load_settings
from config.settings import REPO_ROOT, Settings


@pytest.fixture(scope="session")
def api_settings(tmp_path_factory: pytest.TempPathFactory, vllm_server: LLMServer) -> Settings:
    root = tmp_path_factory.mktemp("api")
    shutil.copytree(REPO_ROOT / "data" / "docs" / "user-guide", root / "docs" / "user-guide")
    return load_settings(
        "test",
        index={"index_dir": root / "index", "docs_dir": root / "docs", "top_k": 3},
        llm={"base_url": vllm_server.base_url, "model": vllm_server.model, "max_tokens": 48},
        chains={"conversations_db": root / "conversations.sqlite"},
        cache={"dir": root / "cache"},
        api={"api_key": API_KEY, "store_db": root / "app.sqlite", "max_upload_mb": UPLOAD_LIMIT_MB},
    )


@pytest.fixture(scope="session")
def chat_service(api_settings: Settings) -> Iterator[Any]:
    from app.service import ChatService

    with ChatService.from_settings(api_settings) as service:
        yield service


@pytest.fixture(scope="session")
def api(api_settings: Settings, chat_service: Any) -> Iterator[RunningApi]:
    from app.api import create_app

    running = start_api(create_app(api_settings, chat_service))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def docs_dir(api_settings: Settings) -> Path:
    return api_settings.resolve(api_settings.index.docs_dir)
