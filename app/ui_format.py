"""Plain-text pieces of the chat UI (timing line, source titles, sizes): no Streamlit here, so
they are tested on their own and the page code stays about layout."""

from __future__ import annotations

import re

from chains.results import Source, Timings
from chains.tokens import approx_tokens

_CACHE_NOTICE = re.compile(r"semantic cache \(similarity ([0-9.]+)\)")


def duration(seconds: float) -> str:
    """`85 ms` below a second, `1.4 s` above."""
    if seconds < 1.0:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.1f} s"


def timing_line(timings: Timings, answer: str = "") -> str:
    """The compact line under an answer: retrieval · first token · tokens/s · total.

    Stages that did not run (a cache hit retrieves nothing) are left out. The stored turn keeps
    no token count, so tokens/s is estimated from the answer text with the chains' own token
    estimate and marked `≈`."""
    parts = []
    if timings.retrieval_s > 0:
        parts.append(f"retrieval {duration(timings.retrieval_s)}")
    if timings.ttft_s is not None:
        parts.append(f"first token {duration(timings.ttft_s)}")
    if answer and timings.generation_s > 0:
        parts.append(f"≈{approx_tokens(answer) / timings.generation_s:.0f} tokens/s")
    parts.append(f"total {duration(timings.total_s)}")
    return " · ".join(parts)


def cache_similarity(notices: tuple[str, ...]) -> float | None:
    """The similarity of a cache hit, from the notice the agent attaches to the turn."""
    for notice in notices:
        match = _CACHE_NOTICE.search(notice)
        if match:
            return float(match.group(1))
    return None


def source_title(source: Source) -> str:
    """Expander title of a cited source: `[2] guide.md, p. 3, § Setup · score 0.81`."""
    return f"[{source.id}] {source.label()} · score {source.score:.2f}"


def size(num_bytes: int) -> str:
    """`812 B`, `14.2 KB`, `3.1 MB`."""
    if num_bytes < 1024:
        return f"{num_bytes} B"
    if num_bytes < 1024**2:
        return f"{num_bytes / 1024:.1f} KB"
    return f"{num_bytes / 1024**2:.1f} MB"
