"""Approximate token counting shared by every prompt budget in the chains.

The served model's tokenizer lives behind HTTP, so budgets use the same estimate as LangChain's
`count_tokens_approximately` (4 characters per token): summary triggers, context budgets and
question limits then agree with each other, and nothing here needs a tokenizer download.
"""

from __future__ import annotations

import math

CHARS_PER_TOKEN = 4.0


def approx_tokens(text: str) -> int:
    """Estimated tokens in `text` (0 for an empty string)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def truncate_to_tokens(text: str, max_tokens: int) -> str:
    """`text` cut to about `max_tokens`, at a word boundary when one is near the cut."""
    limit = int(max_tokens * CHARS_PER_TOKEN)
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ", limit // 2)
    return (cut[:space] if space > 0 else cut).rstrip()
