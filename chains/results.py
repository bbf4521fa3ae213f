"""What a turn returns: the answer, its sources, how it was produced and what it cost."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal


def location(file: str, page: int | None, heading: str | None) -> str:
    """Short human-readable place in a document: `file, p. 3, § Heading`."""
    parts = [file]
    if page is not None:
        parts.append(f"p. {page}")
    if heading:
        parts.append(f"§ {heading}")
    return ", ".join(parts)


@dataclass(frozen=True)
class Source:
    """A passage the answer rests on; `id` is the number cited in the answer as [id]."""

    id: int
    file: str
    title: str | None
    page: int | None
    heading: str | None
    chunk: int
    score: float
    snippet: str
    node_id: str

    def label(self) -> str:
        return location(self.file, self.page, self.heading)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Source:
        """Rebuild a source stored in the cache (unknown keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class Timings:
    """Seconds spent per stage of one turn (0 when a stage did not run)."""

    cache_lookup_s: float = 0.0
    condense_s: float = 0.0
    retrieval_s: float = 0.0
    ttft_s: float | None = None
    """From the start of the turn to the first answer text (None when nothing was produced)."""
    generation_s: float = 0.0
    """From the first to the last answer text."""
    llm_s: float = 0.0
    """Wall time inside model calls, as seen by the client (condense, summary, answer)."""
    total_s: float = 0.0


@dataclass(frozen=True)
class TokenUsage:
    """Tokens reported by the model server for every model call of the turn."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    llm_calls: int = 0


@dataclass(frozen=True)
class Step:
    """One step of the agent loop: a model call or a tool call, with its wall time."""

    kind: Literal["model", "tool"]
    name: str
    seconds: float


@dataclass(frozen=True)
class TurnResult:
    """One answered turn. Streaming yields text pieces, then this same object."""

    answer: str
    sources: tuple[Source, ...]
    conversation_id: str
    question: str
    """The question as answered (stripped, possibly truncated)."""
    standalone_question: str
    """The question rewritten without the conversation (the question itself when it needed no
    rewrite or the rewrite failed the checks; `notices` say which); what the cache saw. Retrieval
    used it and, when they differ, the question as asked."""
    cached: bool
    retrieval_only: bool
    """True when the model was unreachable and the answer lists the top passages instead."""
    notices: tuple[str, ...]
    timings: Timings
    tokens: TokenUsage
    steps: tuple[Step, ...] = ()
    """The agent loop's model and tool calls in order (empty for cache hits and retrieval-only answers)."""
    error: str | None = None
    """Why the model could not answer (only with `retrieval_only` or `interrupted`)."""
    interrupted: bool = False
    """The model server failed after the answer had started: `answer` is the text that arrived,
    cut short (a client that saw it stream must learn it is incomplete, not get a new answer)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (for the HTTP API and the CLI)."""
        return dataclasses.asdict(self)
