"""`RagAgent.from_settings` owns what it builds: a failure halfway leaves nothing open behind."""

from __future__ import annotations

import gc
import threading
from pathlib import Path
from typing import Any

import pytest

from chains import RagAgent
from chains.conversations import ConversationStoreError
from config import load_settings
from config.settings import Settings
from indexing.pipeline import ingest
from tests.chains.chain_docs import write_docs
from tests.indexing.index_fixtures import open_files_under


def own_index_settings(tmp_path: Path, embed_model: Any, **sections: dict[str, Any]) -> Settings:
    """Test settings over a fresh index nobody else in this process holds open."""
    settings = load_settings(
        "test",
        index={"index_dir": tmp_path / "index", "docs_dir": tmp_path / "docs"},
        llm={"base_url": "http://127.0.0.1:9/v1", "model": "rag-model"},
        cache={"dir": tmp_path / "cache", "enabled": True},
        **sections,
    )
    assert ingest(settings.index, [write_docs(tmp_path / "docs")], progress=False, embed_model=embed_model).ok
    gc.collect()
    return settings


def test_a_failing_part_makes_from_settings_release_what_it_built(tmp_path: Path, embed_model: Any) -> None:
    blocked = tmp_path / "conversations.sqlite"
    blocked.mkdir()  # the conversations database cannot open: the last part fails, after all others exist
    settings = own_index_settings(tmp_path, embed_model, chains={"conversations_db": blocked})
    threads = set(threading.enumerate())

    with pytest.raises(ConversationStoreError, match="unreadable"):
        RagAgent.from_settings(settings)

    gc.collect()
    assert open_files_under(settings.index.index_dir) == 0  # the retriever it opened is closed
    assert [t.name for t in set(threading.enumerate()) - threads if t.is_alive()] == []  # no loop thread left


def test_close_releases_what_from_settings_built(tmp_path: Path, embed_model: Any) -> None:
    settings = own_index_settings(tmp_path, embed_model, chains={"conversations_db": tmp_path / "c.sqlite"})
    with RagAgent.from_settings(settings) as agent:
        assert agent.retriever.retrieve("How long is the X200 warranty?")[0].source == "warranty.md"
        assert open_files_under(settings.index.index_dir) > 0
    gc.collect()
    assert open_files_under(settings.index.index_dir) == 0
    assert open_files_under(tmp_path / "c.sqlite") == 0
