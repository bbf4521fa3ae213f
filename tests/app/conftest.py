"""Fixtures for the API tests: the API under test (`api`) runs in two modes, and every test that
uses it runs in both unless marked `per_process`:

- `embedded`: one real API server (uvicorn, loopback, free port) over a real index of the sample
  user guide (embedded Chroma, SQLite stores, a local GPTCache);
- `shared`: `state.mode: shared`, two API replicas (`python -m app.api` processes) over one real
  PostgreSQL and one real Chroma server, behind a front that sends each request to the next
  replica, so a conversation, upload, feedback or cache entry made through one is read through
  the other (tests/app/replicas.py).

Both use the real MiniLM embedding and the session's real vLLM server; a bearer key is set, so
every test also exercises auth. Each mode's servers start once per session."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.store import store_url
from config import load_settings
from config.settings import REPO_ROOT, Settings
from tests.app.api_server import API_KEY, UPLOAD_LIMIT_MB, start_api
from tests.app.replicas import ApiUnderTest, Replica, Shared, front_of, replica_pair
from tests.llm_server import LLMServer

MODES = ("embedded", "shared")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test using `api` runs once per mode; `@pytest.mark.per_process` ones embedded only."""
    if "api_mode" in metafunc.fixturenames:
        per_process = metafunc.definition.get_closest_marker("per_process") is not None
        modes = ["embedded"] if per_process else list(MODES)
        metafunc.parametrize("api_mode", modes, indirect=True, scope="session")


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
def api_mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def api(api_mode: str, request: pytest.FixtureRequest) -> ApiUnderTest:
    """The API under test in this mode (see the module docstring)."""
    api: ApiUnderTest = request.getfixturevalue(f"{api_mode}_api")
    return api


@pytest.fixture(scope="session")
def embedded_api(api_settings: Settings, chat_service: Any) -> Iterator[ApiUnderTest]:
    from app.api import create_app

    running = start_api(create_app(api_settings, chat_service))
    try:
        yield ApiUnderTest("embedded", running.url, api_settings.index.docs_dir, store_url(api_settings))
    finally:
        running.stop()


@pytest.fixture(scope="session")
def shared(tmp_path_factory: pytest.TempPathFactory, postgres_url: str, chroma_port: int) -> Shared:
    """The shared servers and a root holding the shared documents folder (the sample user guide)."""
    root = tmp_path_factory.mktemp("shared")
    shutil.copytree(REPO_ROOT / "data" / "docs" / "user-guide", root / "docs" / "user-guide")
    return Shared(postgres_url, chroma_port, root)


@pytest.fixture(scope="session")
def replicas(shared: Shared, vllm_server: LLMServer) -> Iterator[tuple[Replica, Replica]]:
    """Two shared-mode replicas, started together on an empty index (both build it, in turn)."""
    with replica_pair(shared, vllm_server) as pair:
        yield pair


@pytest.fixture(scope="session")
def shared_api(shared: Shared, replicas: tuple[Replica, Replica]) -> Iterator[ApiUnderTest]:
    with front_of(shared, replicas) as api:
        yield api


@pytest.fixture
def docs_dir(api: ApiUnderTest) -> Path:
    return api.docs_dir
