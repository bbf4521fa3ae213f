"""Guards around the follow-up rewrite, so that a bad rewrite cannot wreck retrieval.

A model asked to rewrite a follow-up may return nothing, ramble, answer instead, or (the offline
random model) return noise; a question that names its subject needs no rewrite at all. So:

1. `needs_history` decides, before any model call, whether the question refers back to the
   conversation. Documented rule: it does when it contains a referring word (pronoun, demonstrative,
   "instead", "too", ... in `REFERRING_WORDS`), starts like a continuation ("and ...", "what about
   ...", `CONTINUATION_OPENERS`), or has fewer than `RewriteRules.min_content_words` content words
   (an ellipsis such as "Default port?"). Otherwise the question is used as asked.
2. `rejection` checks the rewrite before it replaces the question: refused when empty, far longer
   than the question (`max_words_ratio` x its words + `max_extra_words`), or sharing none of its
   content words (stemmed); a question with no content words of its own cannot be checked that way.
3. `fuse` merges the passages retrieved for the rewrite and for the question as asked (reciprocal
   rank fusion, rewrite first on ties), so a plausible-looking but wrong rewrite still leaves the
   original question's passages in the running.

The thresholds were chosen on one half of the follow-up set in `bench/data/followups.json` and
are reported on the other half by `bench/followups.py`.
"""

from __future__ import annotations

import dataclasses
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import Stemmer

if TYPE_CHECKING:
    from indexing.retrieval import Passage


def _word_set(text: str) -> frozenset[str]:
    return frozenset(text.split())


REFERRING_WORDS = _word_set(
    "it its itself they them their theirs themselves this that these those he him his she her "
    "there then ones former latter same such instead too also either neither else other"
)
"""Words that point back at something said earlier (an "it", "that one", "... instead")."""

CONTINUATION_OPENERS = (
    "and",
    "but",
    "or",
    "so",
    "also",
    "then",
    "what about",
    "how about",
    "what if",
    "even",
)
"""First words that make a question continue the previous one ("And on a CPU?")."""

FUNCTION_WORDS = _word_set(
    "a an the of to in on at by for with from into onto about as than and or but nor not no yes so "
    "if then else when where why how what which who whom whose is are was were be been being am do "
    "does did done doing have has had having can could shall should will would may might must "
    "i me my mine we us our ours you your yours any some all each every more most much many few "
    "very just only also too again still even please tell explain show give get got there here "
    "up down out off over under"
)
"""Words that carry no subject: question words, auxiliaries, pronouns, prepositions."""

_WORD = re.compile(r"[a-z0-9][a-z0-9_.\-]*[a-z0-9]|[a-z0-9]")
_local = threading.local()


@dataclass(frozen=True)
class RewriteRules:
    """The thresholds of the checks; defaults chosen on the tuning half of the follow-up set."""

    min_content_words: int = 1
    """A question with fewer content words than this is an ellipsis and needs the history."""
    max_words_ratio: float = 4.0
    max_extra_words: int = 20
    """A rewrite may have at most ratio x the question's words + extra words."""

    def __post_init__(self) -> None:
        if self.min_content_words < 0 or self.max_words_ratio < 1 or self.max_extra_words < 0:
            raise ValueError(f"invalid rewrite rules: {self}")


DEFAULT_RULES = RewriteRules()


def words(text: str) -> list[str]:
    """Lower-cased words; dots, dashes and underscores inside a word keep it whole (`top_k`, `.docx`)."""
    return _WORD.findall(text.lower())


def content_words(text: str) -> set[str]:
    """Stemmed words that are not function words ("formats" and "format" are one word)."""
    stemmer = getattr(_local, "stemmer", None)
    if stemmer is None:
        stemmer = _local.stemmer = Stemmer.Stemmer("english")  # not thread-safe: one per thread
    kept = [w for w in words(text) if w not in FUNCTION_WORDS and w not in REFERRING_WORDS]
    return set(stemmer.stemWords(kept))


def needs_history(question: str, rules: RewriteRules = DEFAULT_RULES) -> bool:
    """Whether `question` refers back to the conversation (see the module docstring for the rule)."""
    tokens = words(question)
    if any(t in REFERRING_WORDS for t in tokens):
        return True
    opening = " ".join(tokens[:2])
    if any(opening == o or opening.startswith(o + " ") for o in CONTINUATION_OPENERS):
        return True
    return len(content_words(question)) < rules.min_content_words


def rejection(question: str, rewrite: str, rules: RewriteRules = DEFAULT_RULES) -> str | None:
    """Why `rewrite` must not replace `question`, or None when it may."""
    if not rewrite.strip():
        return "the rewrite is empty"
    asked, rewritten = words(question), words(rewrite)
    limit = rules.max_words_ratio * len(asked) + rules.max_extra_words
    if len(rewritten) > limit:
        return f"the rewrite is far longer than the question ({len(rewritten)} words for {len(asked)})"
    own = content_words(question)
    if own and not own & content_words(rewrite):
        return "the rewrite shares no content word with the question"
    return None


def fuse(rewritten: Sequence[Passage], original: Sequence[Passage], k: int, rrf_k: int = 60) -> list[Passage]:
    """The best `k` of both lists by reciprocal rank fusion (scores become the fused ones); a
    passage in both rises to the top, ties go to the rewrite's order."""
    from indexing.retrieval import reciprocal_rank_fusion  # not at import: it loads Chroma

    by_id = {p.node_id: p for p in (*original, *rewritten)}
    ranked = reciprocal_rank_fusion([[p.node_id for p in rewritten], [p.node_id for p in original]], rrf_k)
    return [dataclasses.replace(by_id[node_id], score=score) for node_id, score in ranked[:k]]
