"""A retriever is closed when done: the last one of an index releases Chroma's file handles."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest

from config.settings import IndexSettings
from indexing import IndexingError, open_retriever
from indexing.pipeline import ingest
from tests.indexing.index_fixtures import open_files_under, write_fixture_corpus


@pytest.fixture
def index(tmp_path: Path, embed_model: Any) -> IndexSettings:
    settings = IndexSettings(docs_dir=write_fixture_corpus(tmp_path / "docs"), index_dir=tmp_path / "index")
    assert ingest(settings, progress=False, embed_model=embed_model).ok
    gc.collect()
    assert open_files_under(settings.index_dir) == 0  # the ingest let go of everything
    return settings


def test_the_last_retriever_to_close_releases_the_index_files(index: IndexSettings, embed_model: Any) -> None:
    first = open_retriever(index, embed_model=embed_model)
    second = open_retriever(index, embed_model=embed_model)
    assert first.retrieve("the largest planet") and second.retrieve("the largest planet")
    assert open_files_under(index.index_dir) > 0

    first.close()
    first.close()  # idempotent
    assert second.retrieve("the largest planet")[0].source == "astronomy.md"  # the other one still works
    second.close()
    gc.collect()

    assert open_files_under(index.index_dir) == 0
    with pytest.raises(IndexingError, match="closed"):
        first.retrieve("the largest planet")
    with open_retriever(index, embed_model=embed_model) as again:  # a later open starts afresh
        assert again.retrieve("the largest planet")[0].source == "astronomy.md"
    gc.collect()
    assert open_files_under(index.index_dir) == 0
