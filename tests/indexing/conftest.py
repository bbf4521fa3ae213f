"""Fixtures for the indexing tests: a fixture corpus, index settings, an ingest with the shared MiniLM.

Every test gets its own corpus and index under tmp_path; nothing here reads ../shared or data/index.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from config.settings import IndexSettings
from indexing.pipeline import ingest
from indexing.report import IngestReport
from tests.indexing.index_fixtures import write_fixture_corpus


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    return write_fixture_corpus(tmp_path / "docs")


@pytest.fixture
def settings(tmp_path: Path, docs: Path) -> IndexSettings:
    return IndexSettings(docs_dir=docs, index_dir=tmp_path / "index")


@pytest.fixture
def run_ingest(embed_model: Any) -> Callable[..., IngestReport]:
    def run(settings: IndexSettings, paths: list[Path] | None = None, **kwargs: Any) -> IngestReport:
        return ingest(settings, paths, progress=False, embed_model=embed_model, **kwargs)

    return run
