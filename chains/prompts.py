"""Every prompt the chains send, and `PROMPT_VERSION`, which scopes the semantic cache.

Layout for vLLM prefix caching: the fixed system prompt and tool schema come first, then the
conversation summary and kept turns, then the retrieved context, then the question, so turns of
one conversation share the longest possible prefix.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from chains.results import Source

NO_ANSWER_PHRASE = "the documents do not say"
"""What SYSTEM_PROMPT tells the model to say when the passages lack the answer; `is_no_answer` finds it."""

SYSTEM_PROMPT = f"""You answer questions about the user's documents.
Each question comes with numbered passages from those documents. Answer from the passages only and \
cite every passage you use as [1], [2], ... right after the statement it supports. If the passages \
do not contain the answer, say that {NO_ANSWER_PHRASE}, in one sentence. When a question has \
several parts and the passages cover only some of them, call search_documents once per missing \
part. Be concise."""

SEARCH_TOOL_DESCRIPTION = (
    "Search the user's documents for passages about `query` (a short standalone search phrase). "
    "Returns numbered passages to cite as [n]."
)

QUESTION_TEMPLATE = """Passages:
{context}

Question: {question}"""

NO_PASSAGES = "(no passages found)"

CONDENSE_TEMPLATE = """Before answering, rewrite my next question as one standalone question that \
can be understood without this conversation. Keep every name, number and negation. Reply with the \
rewritten question only.

Next question: {question}"""
"""Sent after the same system prompt, tools and history as the answer call, so vLLM serves that
whole prefix from its cache and prefills only this message."""

SUMMARY_PROMPT = """Summarise the conversation below between a user and an assistant that answers \
from the user's documents. Keep what the user asked about and the facts, names and numbers the \
answers gave; drop citation marks and pleasantries. At most 150 words.

<messages>
{messages}
</messages>"""

RETRIEVAL_ONLY_TEMPLATE = """The language model is unavailable ({reason}), so here are the most relevant passages \
instead of an answer:

{passages}"""


def question_with_context(context: str, question: str) -> str:
    """The last message of a model call: numbered passages, then the question."""
    return QUESTION_TEMPLATE.format(context=context or NO_PASSAGES, question=question)


def is_no_answer(answer: str) -> bool:
    """Whether `answer` gives the no-answer reply SYSTEM_PROMPT asks for ("The documents don't say ..."
    counts too): how evaluations tell a refusal from an attempt."""
    text = " ".join(answer.lower().replace("\u2019", "'").replace("n't", " not").split())
    return NO_ANSWER_PHRASE in text


def retrieval_only_answer(reason: str, sources: Sequence[Source]) -> str:
    """The answer given when the model cannot be reached: the top passages with their citations."""
    passages = "\n\n".join(f"[{s.id}] {s.label()}\n{s.snippet}" for s in sources) or NO_PASSAGES
    return RETRIEVAL_ONLY_TEMPLATE.format(reason=reason, passages=passages)


def _fingerprint(*texts: str) -> str:
    digest = hashlib.sha256("\x1f".join(texts).encode()).hexdigest()
    return f"p1-{digest[:12]}"


PROMPT_VERSION = _fingerprint(SYSTEM_PROMPT, SEARCH_TOOL_DESCRIPTION, QUESTION_TEMPLATE, CONDENSE_TEMPLATE)
"""Changes whenever an answer-shaping prompt changes, so cached answers of old prompts never match."""
