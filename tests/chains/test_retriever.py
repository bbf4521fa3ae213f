"""The index as a LangChain retriever: invoke, ainvoke, `k` by default and per call, clean metadata."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from chains import IndexRetriever
from config.settings import IndexSettings
from indexing import HybridRetriever, open_retriever
from indexing.pipeline import ingest
from tests.indexing.index_fixtures import write_fixture_corpus


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, embed_model: Any) -> HybridRetriever:
    root = tmp_path_factory.mktemp("langchain")
    settings = IndexSettings(docs_dir=write_fixture_corpus(root / "docs"), index_dir=root / "index", top_k=4)
    assert ingest(settings, progress=False, embed_model=embed_model).ok
    return open_retriever(settings, embed_model=embed_model)


def test_invoke_returns_documents_with_clean_metadata(indexed: HybridRetriever) -> None:
    lc = IndexRetriever(retriever=indexed, k=3)

    docs = lc.invoke("compound interest and the rule of 72")

    assert isinstance(lc, BaseRetriever) and len(docs) == 3
    assert all(isinstance(d, Document) for d in docs)
    top = docs[0]
    assert top.metadata["source"] == "finance.pdf" and top.metadata["page"] == 2
    assert set(top.metadata) <= {"source", "title", "page", "heading", "chunk", "score"}
    assert top.id and "Compound interest" in top.page_content
    passages = indexed.retrieve("compound interest and the rule of 72", top_k=3)
    assert [d.id for d in docs] == [p.node_id for p in passages]


def test_k_defaults_to_settings_and_can_be_overridden_per_call(indexed: HybridRetriever) -> None:
    lc = IndexRetriever(retriever=indexed)
    assert len(lc.invoke("anything about the world")) == 4
    assert len(lc.invoke("anything about the world", k=2)) == 2


async def test_ainvoke_matches_invoke(indexed: HybridRetriever) -> None:
    lc = IndexRetriever(retriever=indexed, k=2)
    sync = lc.invoke("sailing upwind by tacking")
    async_docs = await lc.ainvoke("sailing upwind by tacking")
    assert [d.id for d in async_docs] == [d.id for d in sync]
    assert async_docs[0].metadata["source"] == "sailing.docx"
    assert len(await lc.ainvoke("sailing upwind by tacking", k=1)) == 1


def test_filters_and_mode_pass_through(indexed: HybridRetriever) -> None:
    lc = IndexRetriever(retriever=indexed, k=5, mode="bm25")
    docs = lc.invoke("planet moon star", filters={"source": "astronomy.md"})
    assert docs and {d.metadata["source"] for d in docs} == {"astronomy.md"}
    assert docs[0].metadata["heading"].startswith("Astronomy notes")
