"""Retrieved context of one turn: passage numbering, token budgets, citations.

Passages found by the prefetch and by later `search_documents` calls share one numbering, so
every [n] in the answer maps to exactly one source.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from chains.results import Source, location
from chains.tokens import approx_tokens, truncate_to_tokens
from chains.trace import TurnTrace

if TYPE_CHECKING:
    from indexing.retrieval import Passage

SNIPPET_CHARS = 240
_CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


def _snippet(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= SNIPPET_CHARS else flat[: SNIPPET_CHARS - 1].rstrip() + "…"


def cited_numbers(answer: str) -> list[int]:
    """Passage numbers cited in `answer` as [n] or [n, m], in order of first citation."""
    numbers: list[int] = []
    for match in _CITATION.finditer(answer):
        numbers += [n for n in map(int, match.group(1).split(",")) if n not in numbers]
    return numbers


def strip_citations(answer: str) -> str:
    """`answer` without its [n] citation marks (for scoring the text against reference answers)."""
    return " ".join(_CITATION.sub(" ", answer).split())


class PassageRegistry:
    """Numbers passages as they enter prompts and turns citations back into sources."""

    def __init__(self, token_budget: int) -> None:
        self._budget = token_budget
        self._numbers: dict[str, int] = {}
        self._sources: list[Source] = []

    @property
    def sources(self) -> list[Source]:
        """Every passage shown to the model this turn, in number order."""
        return list(self._sources)

    def add(self, passages: Iterable[Passage]) -> str:
        """Number the passages and render them for a prompt, best first, within the token budget.

        A passage seen before keeps its number. The first passage is shortened rather than
        dropped when it alone exceeds the budget.
        """
        blocks: list[str] = []
        used = 0
        for passage in passages:
            header = location(passage.source, passage.page, passage.heading)
            room = self._budget - used - approx_tokens(header) - 1
            text = passage.text.strip()
            if approx_tokens(text) > room:
                if blocks or room < 16:
                    break
                text = truncate_to_tokens(text, room)
            number = self._number(passage)
            block = f"[{number}] {header}\n{text}"
            blocks.append(block)
            used += approx_tokens(block) + 1
        return "\n\n".join(blocks)

    def cited(self, answer: str) -> list[Source]:
        """Sources cited in `answer` in order of first citation; all shown ones when none is."""
        by_number = {source.id: source for source in self._sources}
        cited = [by_number[n] for n in cited_numbers(answer) if n in by_number]
        return cited or self.sources

    def _number(self, passage: Passage) -> int:
        number = self._numbers.get(passage.node_id)
        if number is None:
            number = len(self._sources) + 1
            self._numbers[passage.node_id] = number
            self._sources.append(
                Source(
                    id=number,
                    file=passage.source,
                    title=passage.title,
                    page=passage.page,
                    heading=passage.heading,
                    chunk=passage.chunk,
                    score=float(passage.score),
                    snippet=_snippet(passage.text),
                    node_id=passage.node_id,
                )
            )
        return number


@dataclass
class TurnContext:
    """What one turn carries through the agent graph (LangGraph runtime context)."""

    question_id: str
    """Message id of this turn's question, where the prefetched passages are attached."""
    context: str
    """Prefetched passages, numbered and within budget."""
    registry: PassageRegistry
    trace: TurnTrace = field(default_factory=TurnTrace)
    model_calls: int = 0
    """Model calls made so far in this turn."""
    model_settings: dict[str, Any] = field(default_factory=dict)
    """Request fields for this turn's answer calls (e.g. `max_completion_tokens`), over the model's own."""
