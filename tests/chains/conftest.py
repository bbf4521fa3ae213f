"""Fixtures for the chains tests: a small real index (Chroma + BM25 + MiniLM) built once, and
settings that keep conversations and the cache under tmp_path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from config import load_settings
from config.settings import Settings
from tests.chains.chain_docs import write_docs
from tests.chains.scripted_model import ScriptedChatModel, scripted_agent


@pytest.fixture(scope="session")
def index_dir(tmp_path_factory: pytest.TempPathFactory, embed_model: Any) -> Path:
    """One real index of DOCS for the session (read-only for tests)."""
    from indexing.pipeline import ingest

    root = tmp_path_factory.mktemp("chains-index")
    settings = load_settings("test", index={"index_dir": root / "index", "docs_dir": root / "docs"})
    ingest(settings.index, [write_docs(root / "docs")], progress=False, embed_model=embed_model)
    return root / "index"


@pytest.fixture(scope="session")
def retriever(index_dir: Path, embed_model: Any) -> Any:
    from indexing.retrieval import open_retriever

    settings = load_settings("test", index={"index_dir": index_dir, "top_k": 3})
    return open_retriever(settings.index, embed_model=embed_model)


@pytest.fixture
def unit_settings(tmp_path: Path, index_dir: Path) -> Settings:
    """Test profile; conversations and cache in tmp_path; no real server needed."""
    return load_settings(
        "test",
        index={"index_dir": index_dir, "top_k": 3},
        llm={"base_url": "http://127.0.0.1:9/v1", "model": "rag-model"},
        chains={"conversations_db": tmp_path / "conversations.sqlite"},
        cache={"dir": tmp_path / "cache", "enabled": False},
    )


@pytest.fixture
def make_agent(unit_settings: Settings, retriever: Any) -> Iterator[Any]:
    """`make_agent(script, settings=None)`: scripted agents on the session index, closed after the test."""
    agents: list[Any] = []

    def make(script: list[Any], settings: Settings | None = None) -> tuple[Any, ScriptedChatModel]:
        agent, model = scripted_agent(settings or unit_settings, retriever, script)
        agents.append(agent)
        return agent, model

    yield make
    for agent in agents:
        agent.close()
