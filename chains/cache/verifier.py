"""A second opinion on a cache hit, asked outside the cache's lock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Verifier = Callable[[str, str], bool]
"""(asked question, cached question) -> same question?"""

_VERIFY_PROMPT = (
    "Do these two questions ask for exactly the same information, so that one answer is correct for both? "
    "Different numbers, dates, names, negations or opposites mean no. Reply with yes or no only.\n"
    "Question A: {a}\nQuestion B: {b}"
)


def model_verifier(chat_model: Any) -> Verifier:
    """A verifier asking the served chat model (any LangChain chat model) for a yes/no.

    Costs one short model call per hit, which is why `cache.verify_with_model` is off by default;
    worth it when a capable model serves and a wrong answer costs more than a regenerated one.
    """
    yes_no = chat_model.bind(max_tokens=3, temperature=0)

    def verify(asked: str, cached: str) -> bool:
        reply = yes_no.invoke(_VERIFY_PROMPT.format(a=asked, b=cached))
        return str(reply.content).strip().lower().startswith("yes")

    return verify
