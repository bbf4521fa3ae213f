"""Every scoring rule the benchmarks use, written once: answer metrics, retrieval ranks, percentiles.

Answer metrics follow the official SQuAD v1.1 evaluation script: answers are normalised (lower
case, punctuation and the articles a/an/the removed, whitespace collapsed) before exact match and
token F1, and a prediction scores the best it gets against any of the gold answers.
Retrieval metrics take, per question, the 1-based rank of the one relevant item (None when it was
not retrieved within the depth), so hit@k, MRR and nDCG share one definition of rank.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals a normalised gold answer, else 0.0."""
    _check_golds(golds)
    predicted = normalize_answer(prediction)
    return float(any(predicted == normalize_answer(gold) for gold in golds))


def token_f1(prediction: str, golds: Sequence[str]) -> float:
    """Harmonic mean of token precision and recall of the normalised texts, best over the golds."""
    _check_golds(golds)
    return max(_f1(normalize_answer(prediction).split(), normalize_answer(gold).split()) for gold in golds)


def _f1(predicted: list[str], gold: list[str]) -> float:
    if not predicted or not gold:
        return float(predicted == gold)  # SQuAD: two empty answers agree, one empty scores 0
    common = sum((Counter(predicted) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def contains_answer(text: str, golds: Sequence[str]) -> bool:
    """Whether a normalised gold answer occurs in the normalised text as whole words."""
    _check_golds(golds)
    padded = f" {normalize_answer(text)} "
    return any(f" {answer} " in padded for answer in map(normalize_answer, golds) if answer)


def citation_correct(cited_passages: Iterable[str], golds: Sequence[str]) -> bool:
    """Citation accuracy of one answer: some cited passage contains a gold answer (none cited: False)."""
    return any(contains_answer(passage, golds) for passage in cited_passages)


def _check_golds(golds: Sequence[str]) -> None:
    if isinstance(golds, str) or not golds:
        raise ValueError("gold answers must be a non-empty sequence of strings")


def first_rank(ranked: Iterable[str], relevant: str, depth: int) -> int | None:
    """1-based rank of `relevant` among the distinct items of `ranked`, or None beyond `depth`.

    Repeats collapse onto their first place (several chunks of one document count once).
    """
    seen: set[str] = set()
    for item in ranked:
        if item in seen:
            continue
        seen.add(item)
        if len(seen) > depth:
            return None
        if item == relevant:
            return len(seen)
    return None


def hit_at_k(ranks: Sequence[int | None], k: int) -> float:
    """Share of questions whose relevant item ranks within the top `k`."""
    return _mean(1.0 if r is not None and r <= k else 0.0 for r in ranks)


def mrr(ranks: Sequence[int | None]) -> float:
    """Mean reciprocal rank (0 for a question whose item was not retrieved)."""
    return _mean(1 / r if r is not None else 0.0 for r in ranks)


def ndcg_at_k(ranks: Sequence[int | None], k: int) -> float:
    """nDCG@k with one relevant item per question (its ideal DCG is 1)."""
    return _mean(1 / math.log2(r + 1) if r is not None and r <= k else 0.0 for r in ranks)


def ranking_metrics(ranks: Sequence[int | None]) -> dict[str, float]:
    """hit@1/5/10, MRR@10 and nDCG@10 (ranks beyond 10 must already be None)."""
    if any(r is not None and not 1 <= r <= 10 for r in ranks):
        raise ValueError("ranks must be 1..10 or None for these @10 metrics")
    return {
        "hit@1": hit_at_k(ranks, 1),
        "hit@5": hit_at_k(ranks, 5),
        "hit@10": hit_at_k(ranks, 10),
        "mrr@10": mrr(ranks),
        "ndcg@10": ndcg_at_k(ranks, 10),
    }


def rate(flags: Iterable[bool | float]) -> float:
    """Mean of booleans or scores; NaN for none (a rate over nothing is undefined, not 0)."""
    return _mean(float(flag) for flag in flags)


def _mean(values: Iterable[float]) -> float:
    items = list(values)
    return sum(items) / len(items) if items else math.nan


def percentile(values: Sequence[float] | npt.NDArray[Any], q: float) -> float:
    """The q-th percentile (0-100), linearly interpolated between ranks (numpy's default); NaN for none."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be between 0 and 100, not {q}")
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else math.nan
