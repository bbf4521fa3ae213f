"""Fixtures for the fault tests: one real index of the sample user guide (Chroma on disk, BM25,
MiniLM), built once, and settings that give every test its own conversations, cache and store
under tmp_path, against the session's real vLLM server (optionally through a fault proxy)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from config import load_settings
from config.settings import REPO_ROOT, Settings
from tests.app.tcp_proxy import TcpProxy
from tests.llm_server import LLMServer


@pytest.fixture(scope="session")
def guide_index(tmp_path_factory: pytest.TempPathFactory, embed_model: Any) -> Path:
    """The index of data/docs/user-guide (read-only for the tests that share it)."""
    from indexing.pipeline import ingest

    root = tmp_path_factory.mktemp("reliability")
    shutil.copytree(REPO_ROOT / "data" / "docs" / "user-guide", root / "docs" / "user-guide")
    settings = load_settings("test", index={"index_dir": root / "index", "docs_dir": root / "docs", "top_k": 3})
    assert ingest(settings.index, progress=False, embed_model=embed_model).ok
    return root / "index"


@pytest.fixture
def proxy(vllm_server: LLMServer) -> Iterator[TcpProxy]:
    """A fault proxy in front of the session's engine."""
    engine = urlsplit(vllm_server.base_url)
    running = TcpProxy(str(engine.hostname), int(engine.port or 80))
    yield running
    running.close()


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(tmp_path: Path, guide_index: Path, vllm_server: LLMServer) -> SettingsFactory:
    """`make_settings(llm={...}, cache={...}, ...)`: test-profile settings on the shared index, with
    this test's own conversations, cache and chat store; `llm.base_url` defaults to the engine."""

    def make(**sections: dict[str, Any]) -> Settings:
        base: dict[str, dict[str, Any]] = {
            "index": {"index_dir": guide_index, "docs_dir": guide_index.parent / "docs", "top_k": 3},
            "llm": {"base_url": vllm_server.base_url, "model": vllm_server.model, "max_tokens": 16},
            "chains": {"conversations_db": tmp_path / "conversations.sqlite"},
            "cache": {"dir": tmp_path / "cache"},
            "api": {"store_db": tmp_path / "app.sqlite"},
        }
        for name, values in sections.items():
            base[name] = {**base.get(name, {}), **values}
        return load_settings("test", **base)

    return make
