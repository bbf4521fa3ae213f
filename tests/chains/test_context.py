"""Passage numbering, the context budget, citations and the retrieval-only answer."""

from __future__ import annotations

from dataclasses import dataclass

from chains.context import PassageRegistry
from chains.prompts import NO_PASSAGES, PROMPT_VERSION, question_with_context, retrieval_only_answer
from chains.tokens import approx_tokens


@dataclass(frozen=True)
class _Passage:
    """Field-for-field the indexing Passage, so these tests need no index."""

    node_id: str
    text: str
    source: str
    title: str | None = None
    page: int | None = None
    heading: str | None = None
    chunk: int = 0
    score: float = 0.5


def _passages(n: int, words: int = 20, prefix: str = "n") -> list[_Passage]:
    return [_Passage(f"{prefix}{i}", " ".join([f"w{i}"] * words), f"doc{i}.md", page=i, heading="H") for i in range(n)]


def test_passages_are_numbered_in_rank_order_with_their_location() -> None:
    registry = PassageRegistry(1000)
    text = registry.add(_passages(3))
    assert text.startswith("[1] doc0.md, p. 0, § H\nw0")
    assert "[2] doc1.md" in text and "[3] doc2.md" in text
    assert [s.id for s in registry.sources] == [1, 2, 3]
    assert registry.sources[1].file == "doc1.md" and registry.sources[1].snippet.startswith("w1")


def test_context_stays_within_the_token_budget() -> None:
    registry = PassageRegistry(120)
    text = registry.add(_passages(10, words=30))
    assert approx_tokens(text) <= 120
    assert 1 <= len(registry.sources) < 10


def test_an_oversized_first_passage_is_shortened_not_dropped() -> None:
    registry = PassageRegistry(64)
    text = registry.add(_passages(1, words=500))
    assert text.startswith("[1] ")
    assert approx_tokens(text) <= 64
    assert len(registry.sources) == 1


def test_later_searches_continue_the_numbering_and_reuse_known_passages() -> None:
    registry = PassageRegistry(1000)
    registry.add(_passages(2))
    text = registry.add([_passages(2)[1], *_passages(2, prefix="m")])
    assert text.startswith("[2] ")
    assert "[3] " in text and "[4] " in text
    assert [s.node_id for s in registry.sources] == ["n0", "n1", "m0", "m1"]


def test_cited_sources_in_order_of_first_citation() -> None:
    registry = PassageRegistry(1000)
    registry.add(_passages(4))
    cited = registry.cited("Yes [3]. Also [1, 3] and [9] (unknown).")
    assert [s.id for s in cited] == [3, 1]


def test_no_citation_returns_every_passage_shown() -> None:
    registry = PassageRegistry(1000)
    registry.add(_passages(3))
    assert [s.id for s in registry.cited("no citations here")] == [1, 2, 3]


def test_question_layout_puts_passages_before_the_question() -> None:
    text = question_with_context("[1] a.md\nalpha", "What?")
    assert text.index("[1] a.md") < text.index("Question: What?")
    assert NO_PASSAGES in question_with_context("", "What?")


def test_retrieval_only_answer_lists_passages_with_citations() -> None:
    registry = PassageRegistry(1000)
    registry.add(_passages(2))
    text = retrieval_only_answer("cannot reach the model server", registry.sources)
    assert "unavailable (cannot reach the model server)" in text
    assert "[1] doc0.md, p. 0, § H" in text and "[2] doc1.md" in text


def test_prompt_version_is_a_stable_fingerprint() -> None:
    assert PROMPT_VERSION.startswith("p1-") and len(PROMPT_VERSION) == 15
