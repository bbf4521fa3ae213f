"""The scoring rules of bench.metrics against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from bench.metrics import (
    citation_correct,
    contains_answer,
    exact_match,
    first_rank,
    hit_at_k,
    mrr,
    ndcg_at_k,
    normalize_answer,
    percentile,
    ranking_metrics,
    rate,
    token_f1,
)


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("The Denver Broncos!", "denver broncos"),
        ("  an   apple,  a pear ", "apple pear"),
        ("Theory of the Atom", "theory of atom"),  # "the" goes, "theory" stays
        ("U.S. $5", "us 5"),
        ("", ""),
    ],
)
def test_normalisation_lowers_and_drops_punctuation_articles_and_spaces(text: str, normal: str) -> None:
    assert normalize_answer(text) == normal


def test_exact_match_is_the_best_over_the_gold_answers() -> None:
    assert exact_match("the Denver Broncos.", ["Broncos", "Denver Broncos"]) == 1.0
    assert exact_match("Denver", ["Broncos", "Denver Broncos"]) == 0.0


def test_token_f1_by_hand() -> None:
    # prediction "denver broncos won" vs gold "denver broncos": common 2, P = 2/3, R = 1 -> F1 = 0.8
    assert token_f1("Denver Broncos won", ["Denver Broncos"]) == pytest.approx(0.8)
    # best over golds: vs "broncos" common 1, P = 1/3, R = 1 -> 0.5; vs "carolina panthers" 0
    assert token_f1("Denver Broncos won", ["Carolina Panthers", "the Broncos"]) == pytest.approx(0.5)
    # repeated tokens count once per occurrence: "a a b" vs "a b b" -> common 2, P = R = 2/3
    assert token_f1("x x y", ["x y y"]) == pytest.approx(2 / 3)
    assert token_f1("nothing shared", ["Denver"]) == 0.0


def test_empty_answers_follow_the_squad_script() -> None:
    assert token_f1("", ["Denver"]) == 0.0
    assert token_f1("the", ["a"]) == 1.0  # both normalise to nothing
    assert exact_match("", ["Denver"]) == 0.0


def test_contains_answer_needs_whole_words() -> None:
    golds = ["Denver Broncos"]
    assert contains_answer("It was the Denver Broncos, in 2016.", golds)
    assert not contains_answer("The Denver Broncosaurus", golds)
    assert not contains_answer("Broncos of Denver", golds)
    assert contains_answer("1,000 people", ["1000"])  # punctuation inside numbers goes both sides


def test_citation_is_correct_when_a_cited_passage_holds_a_gold_answer() -> None:
    golds = ["oxygen"]
    assert citation_correct(["Nitrogen is inert.", "Oxygen is reactive."], golds)
    assert not citation_correct(["Nitrogen is inert."], golds)
    assert not citation_correct([], golds)


@pytest.mark.parametrize("golds", [[], "Denver"])
def test_gold_answers_must_be_a_non_empty_list(golds: list[str] | str) -> None:
    with pytest.raises(ValueError, match="gold answers"):
        exact_match("Denver", golds)


def test_first_rank_collapses_repeats_and_stops_at_the_depth() -> None:
    ranked = ["a", "a", "b", "a", "c", "d"]
    assert first_rank(ranked, "b", depth=10) == 2
    assert first_rank(ranked, "c", depth=3) == 3
    assert first_rank(ranked, "d", depth=3) is None
    assert first_rank(ranked, "z", depth=10) is None


def test_ranking_metrics_by_hand() -> None:
    ranks = [1, 3, None, 10]
    assert hit_at_k(ranks, 1) == 0.25
    assert hit_at_k(ranks, 5) == 0.5
    assert hit_at_k(ranks, 10) == 0.75
    assert mrr(ranks) == pytest.approx((1 + 1 / 3 + 0 + 1 / 10) / 4)
    # nDCG@k, one relevant item: 1 / log2(rank + 1); rank 3 -> 1/2, rank 10 -> 1/log2(11)
    assert ndcg_at_k(ranks, 10) == pytest.approx((1 + 0.5 + 0 + 1 / math.log2(11)) / 4)
    assert ndcg_at_k(ranks, 5) == pytest.approx((1 + 0.5) / 4)
    assert ranking_metrics(ranks) == {
        "hit@1": 0.25,
        "hit@5": 0.5,
        "hit@10": 0.75,
        "mrr@10": pytest.approx(0.358333, abs=1e-6),
        "ndcg@10": pytest.approx(0.447266, abs=1e-6),  # (1 + 0.5 + 0.289065) / 4
    }


def test_ranking_metrics_refuse_ranks_beyond_their_depth() -> None:
    with pytest.raises(ValueError, match=r"1\.\.10"):
        ranking_metrics([11])


def test_rates_over_nothing_are_undefined_not_zero() -> None:
    assert rate([True, False, True, True]) == 0.75
    assert math.isnan(rate([]))
    assert math.isnan(hit_at_k([], 5))


def test_percentile_interpolates_linearly() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 50) == 2.5
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    # rank (4 - 1) * 0.9 = 2.7 -> 3 + 0.7 * (4 - 3)
    assert percentile(values, 90) == pytest.approx(3.7)
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError, match="between 0 and 100"):
        percentile(values, 150)
