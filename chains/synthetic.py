"""Synthetic chat examples that teach the offline tiny model the chains' protocol.

The examples are rendered with the chains' own prompts, passage layout (`PassageRegistry`), tool
schema and summary format, so the model learns exactly the prompts it will be served. Each example
is an OpenAI-format chat (messages + tools) whose last message is the assistant's target. The
trainer (`serving.training`) applies the model's chat template; it never imports this module.

What the model is taught (an extractive toy, not a language model):
- answer: the first sentence of passage [1] followed by ` [1]`; with no passages and no tools,
  `NO_ANSWER`;
- tool call: `search_documents` with the question as query when there are no passages, or with the
  phrase after "search for" / "look up" when the question asks to search (only while tools are
  offered and the turn has no tool result yet);
- after a tool result: the first sentence of the first returned passage with its number, or
  `NO_ANSWER` when the search found nothing;
- condense: the follow-up unchanged when it names its subject, else its first pronoun replaced by
  the subject of the last question;
- summary: the user's questions of the summarised turns, in order.

    python -m chains.synthetic --out models/tiny-data   # writes train.jsonl and eval.jsonl
"""

from __future__ import annotations

import argparse
import inspect
import json
import random
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.messages.utils import get_buffer_string
from langchain_core.utils.function_calling import convert_to_openai_tool

from chains.context import PassageRegistry
from chains.prompts import (
    CONDENSE_TEMPLATE,
    NO_PASSAGES,
    SUMMARY_PROMPT,
    SYSTEM_PROMPT,
    UNTRUSTED_TEMPLATE,
    question_with_context,
    untrusted,
)
from chains.tools import make_search_tool
from config.settings import REPO_ROOT
from indexing.retrieval import Passage

NO_ANSWER = "The documents do not say."
TOOL_NAME = "search_documents"
SUMMARY_HEADER = "Here is a summary of the conversation to date:\n\n"
"""What LangChain's summary memory puts before a summary (langchain.agents.middleware)."""

KINDS = ("answer", "no_answer", "tool_call", "tool_answer", "condense", "summary")
"""Behaviours, each measured separately on held-out examples."""

DOCS_DIR = REPO_ROOT / "data" / "docs"
DOC_SUFFIXES = (".md", ".txt")
STDLIB_MODULES = ("argparse", "collections", "csv", "json", "logging", "pathlib", "textwrap", "unittest")
"""Stdlib documentation adds plain English prose beside the sample corpus; nothing is downloaded."""

QUESTION_TEMPLATES = (
    "What is {s}?",
    "How do I use {s}?",
    "How does {s} work?",
    "Where can I find {s}?",
    "Why is {s} needed?",
    "Tell me about {s}.",
    "Explain {s}.",
    "How do I configure {s}?",
    "What happens to {s}?",
)
SEARCH_TEMPLATES = (
    "Search for {p}.",
    "Search for {p}",
    "search for {p}?",
    "Please search for {p}.",
    "Can you search for {p}?",
    "Look up {p}.",
    "Look up {p}",
    "Please look up {p}.",
    "Could you look up {p}?",
)
FOLLOW_UPS = (
    "And how do I change it?",
    "How do I remove them again?",
    "Why is that?",
    "Where is it configured?",
    "Is it fast?",
    "What about this on a GPU?",
    "Can I turn it off?",
    "How do I test that?",
    "What does it cost?",
    "And what happens to them later?",
)
DETERMINERS = ("the", "my", "your", "our", "a", "an")
PRONOUNS = ("it", "them", "they", "this", "that", "these", "those")
_PRONOUN = re.compile(r"\b(" + "|".join(PRONOUNS) + r")\b", re.IGNORECASE)
_DETERMINER = re.compile(r"\b(" + "|".join(DETERMINERS) + r")\b", re.IGNORECASE)
_SEARCH = re.compile(r"\b(?:search for|look up)\s+", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")
_WORD = re.compile(r"[A-Za-z][A-Za-z-]*")


# The rules: what the model must answer. Each is a plain function of the prompt's parts.


def first_sentence(text: str) -> str:
    """The first sentence of a passage: heading lines skipped, up to the first . ! or ? that ends
    a word, within the first paragraph (the whole paragraph when it has no such stop)."""
    lines = text.strip().split("\n")
    while lines and (not lines[0].strip() or lines[0].lstrip().startswith("#")):
        lines.pop(0)
    paragraph = "\n".join(lines).split("\n\n", 1)[0]
    end = _SENTENCE_END.search(paragraph)
    return paragraph[: end.end()] if end else paragraph


_FENCE_HEAD, _FENCE_TAIL = UNTRUSTED_TEMPLATE.split("{passages}")


def unfenced(context: str) -> str:
    """The numbered passages inside the untrusted-data fence that prompts and tool results put
    around them (`chains.prompts.untrusted`); unfenced text is returned as it is."""
    return context.removeprefix(_FENCE_HEAD).removesuffix(_FENCE_TAIL)


def answer_from(context: str) -> str:
    """The answer to a prompt whose first numbered passage block starts `context` (fenced or not)."""
    context = unfenced(context)
    if not context or context == NO_PASSAGES:
        return NO_ANSWER
    header, _, rest = context.partition("\n")
    number = header[1 : header.index("]")]
    body = rest.split("\n\n[", 1)[0]
    return f"{first_sentence(body)} [{number}]"


def search_query(question: str) -> str | None:
    """The phrase after "search for" / "look up", or None when the question does not ask to search."""
    match = _SEARCH.search(question)
    if match is None:
        return None
    return question[match.end() :].strip().rstrip("?.!").strip() or None


def tool_call_query(question: str, context: str) -> str | None:
    """The query the model must search for on a first call with tools, or None to answer: the
    question itself, final punctuation dropped (a copy of one span is what a tiny model learns;
    hybrid retrieval does not mind the "search for" words)."""
    if search_query(question) is None and unfenced(context) != NO_PASSAGES:
        return None
    return question.strip().rstrip("?.!").strip()


def subject_of(question: str) -> str:
    """The subject of a question: from its first determiner to the end, final punctuation dropped."""
    stripped = question.strip().rstrip("?.!").strip()
    match = _DETERMINER.search(stripped)
    return stripped[match.start() :] if match else stripped


def condensed(follow_up: str, last_question: str) -> str:
    """The follow-up unchanged when it has no pronoun, else its first pronoun replaced by the subject."""
    return _PRONOUN.sub(subject_of(last_question), follow_up, count=1)


def summary_of(questions: list[str]) -> str:
    """The summary the model must write: a short extract, the conversation's first user message
    (an earlier summary when there is one, so it is carried over)."""
    return questions[0]


# Building blocks.


def tool_schema() -> dict[str, Any]:
    """The search tool exactly as the agent offers it (OpenAI format)."""
    return convert_to_openai_tool(make_search_tool(cast(Any, None), top_k=5))


@dataclass(frozen=True)
class Doc:
    source: str
    sentences: tuple[str, ...]


def _docs() -> list[Doc]:
    docs: list[Doc] = []
    for path in sorted(DOCS_DIR.rglob("*")):
        if path.suffix in DOC_SUFFIXES and path.is_file():
            text = path.read_text(encoding="utf-8")
            text = re.sub(r"```.*?```", " ", text, flags=re.DOTALL)
            docs.append(Doc(str(path.relative_to(DOCS_DIR)), _sentences(text)))
    import importlib

    for name in STDLIB_MODULES:
        module = importlib.import_module(name)
        texts = [inspect.getdoc(module) or ""]
        texts += [inspect.getdoc(m) or "" for _, m in sorted(inspect.getmembers(module)) if callable(m)]
        docs.append(Doc(f"python/{name}.txt", _sentences("\n\n".join(texts))))
    return [d for d in docs if len(d.sentences) >= 3]


def _sentences(text: str) -> tuple[str, ...]:
    found: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        flat = " ".join(line.strip() for line in paragraph.splitlines() if not line.lstrip().startswith("#"))
        for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z`(])", flat):
            words = sentence.split()
            if (
                4 <= len(words) <= 30
                and _SENTENCE_END.search(sentence) is not None
                and _SENTENCE_END.search(sentence).end() == len(sentence)  # type: ignore[union-attr]
                and not any(c in sentence for c in '[]"\\>{}|*')
                and not sentence.lstrip().startswith(("-", "1", "2", "3"))
            ):
                found.append(sentence)
    return tuple(dict.fromkeys(found))


def _held_out(sentence: str) -> bool:
    """A fixed 15 % of sentences appear only in evaluation examples (a hash, not a random draw)."""
    return sum(sentence.encode()) % 20 < 3


class Renderer:
    """Draws examples of each kind; `held_out` selects the evaluation sentences."""

    def __init__(self, seed: int, *, held_out: bool) -> None:
        self.rng = random.Random(seed)
        self.tool = tool_schema()
        self.docs = [Doc(d.source, tuple(s for s in d.sentences if _held_out(s) == held_out)) for d in _docs()]
        self.docs = [d for d in self.docs if len(d.sentences) >= 2]
        self._ids = 0

    # Passages and questions.

    def passage(self, long: bool = False) -> Passage:
        rng = self.rng
        doc = rng.choice(self.docs)
        count = rng.randint(3, 6) if long else rng.randint(1, 2)
        start = rng.randrange(len(doc.sentences))
        text = " ".join(doc.sentences[start : start + count])
        if rng.random() < 0.35:
            text = _wrap(text, rng.randint(60, 100))
        heading = None
        if rng.random() < 0.5:
            heading = " > ".join(w.capitalize() for w in self.phrase(doc).split()[:3]) or None
            if rng.random() < 0.5:
                text = f"{'#' * rng.randint(1, 3)} {heading.split(' > ')[-1] if heading else 'Notes'}\n\n{text}"
        page = rng.randint(1, 40) if rng.random() < 0.15 else None
        self._ids += 1
        return Passage(f"n{self._ids}", text, doc.source, None, page, heading, rng.randint(0, 30), 1.0)

    def phrase(self, doc: Doc | None = None, words: tuple[int, int] = (1, 4)) -> str:
        rng = self.rng
        doc = doc or rng.choice(self.docs)
        pool = [w.lower() for w in _WORD.findall(rng.choice(doc.sentences))]
        pool = [w for w in pool if w not in PRONOUNS and w not in DETERMINERS and w not in ("search", "look")]
        if not pool:
            return "settings"
        n = rng.randint(*words)
        start = rng.randrange(max(1, len(pool) - n + 1))
        return " ".join(pool[start : start + n])

    def question(self) -> str:
        subject = f"{self.rng.choice(('the', 'the', 'the', 'my', 'a'))} {self.phrase()}"
        return self.rng.choice(QUESTION_TEMPLATES).format(s=subject)

    def search_question(self) -> str:
        return self.rng.choice(SEARCH_TEMPLATES).format(p=f"{self.rng.choice(('the ', ''))}{self.phrase()}")

    def context(self, registry: PassageRegistry, n: int | None = None) -> str:
        n = self.rng.choice((1, 1, 2, 2, 3, 3)) if n is None else n
        long = self.rng.random() < 0.05
        return registry.add(self.passage(long) for _ in range(n)) or NO_PASSAGES

    def registry(self) -> PassageRegistry:
        return PassageRegistry(self.rng.choice((256, 512, 512, 1024)))

    # Conversation history as stored by the agent (bare questions, answers, tool exchanges).

    def history(self, turns: int) -> tuple[list[BaseMessage], str | None]:
        messages: list[BaseMessage] = []
        last: str | None = None
        for _ in range(turns):
            last = self.question()
            messages.append(HumanMessage(last))
            registry = self.registry()
            if self.rng.random() < 0.3:
                call = self._call_id()
                messages.append(AIMessage("", tool_calls=[{"name": TOOL_NAME, "args": {"query": last}, "id": call}]))
                result = self.context(registry)
                messages.append(ToolMessage(result, tool_call_id=call))
                messages.append(AIMessage(answer_from(result)))
            else:
                messages.append(AIMessage(answer_from(self.context(registry))))
        return messages, last

    def _call_id(self) -> str:
        self._ids += 1
        return f"call_{self._ids}"

    # Examples of each kind.

    def example(self, kind: str) -> dict[str, Any]:
        builders: dict[str, Callable[[], dict[str, Any]]] = {
            "answer": self.answer,
            "no_answer": self.no_answer,
            "tool_call": self.tool_call,
            "tool_answer": self.tool_answer,
            "condense": self.condense,
            "summary": self.summary,
        }
        return builders[kind]()

    def _turn_start(self) -> list[BaseMessage]:
        history, _ = self.history(self.rng.choice((0, 0, 0, 0, 1)))
        return history

    def answer(self) -> dict[str, Any]:
        """Passages present: quote passage [1]. Without tools, even a search request is answered."""
        tools = self.rng.random() < 0.75
        question = self.question() if tools or self.rng.random() < 0.6 else self.search_question()
        context = self.context(self.registry())
        if context == NO_PASSAGES:
            context = self.context(self.registry(), n=1)
        user = HumanMessage(question_with_context(context, question))
        return self._chat("answer", [*self._turn_start(), user], AIMessage(answer_from(context)), tools)

    def no_answer(self) -> dict[str, Any]:
        """No passages and no tools (the turn's last call): say the documents do not say."""
        question = self.rng.choice((self.question(), self.search_question()))
        user = HumanMessage(question_with_context("", question))
        return self._chat("no_answer", [*self._turn_start(), user], AIMessage(NO_ANSWER), tools=False)

    def tool_call(self) -> dict[str, Any]:
        if self.rng.random() < 0.5:
            question, context = self.question(), NO_PASSAGES
        else:
            question, context = self.search_question(), self.context(self.registry())
        query = tool_call_query(question, context)
        assert query is not None
        call = AIMessage("", tool_calls=[{"name": TOOL_NAME, "args": {"query": query}, "id": self._call_id()}])
        user = HumanMessage(question_with_context(context, question))
        return self._chat("tool_call", [*self._turn_start(), user], call, tools=True)

    def tool_answer(self) -> dict[str, Any]:
        """After the tool result: quote its first passage, or say the documents do not say."""
        base = self.tool_call()
        messages = base["messages"]
        registry = self.registry()
        prompt_context = unfenced(messages[-2]["content"].split("\n\nQuestion: ", 1)[0].removeprefix("Passages:\n"))
        if prompt_context != NO_PASSAGES:  # the prefetched passages hold the first numbers
            registry.add(self.passage() for _ in range(prompt_context.count("\n\n[") + 1))
        result = NO_PASSAGES if self.rng.random() < 0.12 else self.context(registry)
        call_id = messages[-1]["tool_calls"][0]["id"]
        tools = self.rng.random() < 0.8
        return {
            "kind": "tool_answer",
            "tools": [self.tool] if tools else None,
            "messages": [
                *messages,
                {"role": "tool", "tool_call_id": call_id, "content": untrusted(result)},  # as the tool returns it
                {"role": "assistant", "content": answer_from(result)},
            ],
        }

    def condense(self) -> dict[str, Any]:
        history, last = self.history(self.rng.choice((1, 1, 1, 2)))
        assert last is not None
        follow_up = self.rng.choice(FOLLOW_UPS) if self.rng.random() < 0.55 else self.question()
        user = HumanMessage(CONDENSE_TEMPLATE.format(question=follow_up))
        return self._chat("condense", [*history, user], AIMessage(condensed(follow_up, last)), tools=True)

    def summary(self) -> dict[str, Any]:
        history, _ = self.history(self.rng.choice((1, 1, 2, 2)))
        questions: list[str] = [str(m.text) for m in history if isinstance(m, HumanMessage)]
        if self.rng.random() < 0.25:  # an earlier summary comes first and is carried over
            earlier = summary_of([self.question() for _ in range(self.rng.randint(1, 2))])
            history.insert(0, HumanMessage(SUMMARY_HEADER + earlier))
            questions.insert(0, earlier)
        prompt = SUMMARY_PROMPT.format(messages=get_buffer_string(history, format="xml")).rstrip()
        return {
            "kind": "summary",
            "tools": None,
            "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": summary_of(questions)}],
        }

    def _chat(self, kind: str, messages: list[BaseMessage], target: AIMessage, tools: bool) -> dict[str, Any]:
        return {
            "kind": kind,
            "tools": [self.tool] if tools else None,
            "messages": [{"role": "system", "content": SYSTEM_PROMPT}, *map(_openai, messages), _openai(target)],
        }


def _openai(message: BaseMessage) -> dict[str, Any]:
    """A LangChain message as the OpenAI chat format vLLM hands to the chat template."""
    if isinstance(message, HumanMessage):
        return {"role": "user", "content": message.text}
    if isinstance(message, ToolMessage):
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.text}
    if isinstance(message, AIMessage) and message.tool_calls:
        calls = [
            {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["args"]}}
            for c in message.tool_calls
        ]
        return {"role": "assistant", "content": message.text, "tool_calls": calls}
    return {"role": "assistant", "content": message.text}


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


MIX = {"answer": 0.22, "no_answer": 0.05, "tool_call": 0.2, "tool_answer": 0.2, "condense": 0.2, "summary": 0.13}
"""Share of each kind in the training set (the evaluation set has equal counts)."""


def training_examples(count: int, seed: int) -> Iterator[dict[str, Any]]:
    renderer = Renderer(seed, held_out=False)
    kinds = list(MIX)
    weights = [MIX[k] for k in kinds]
    for _ in range(count):
        yield renderer.example(renderer.rng.choices(kinds, weights)[0])


def eval_examples(per_kind: int, seed: int) -> Iterator[dict[str, Any]]:
    renderer = Renderer(seed, held_out=True)
    for kind in KINDS:
        for _ in range(per_kind):
            yield renderer.example(kind)


def write_jsonl(path: Path, examples: Iterator[dict[str, Any]]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as out:
        for example in examples:
            out.write(json.dumps(example, ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)
    return n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chains.synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "models" / "tiny-data")
    parser.add_argument("--train", type=int, default=16000, help="training examples")
    parser.add_argument("--eval-per-kind", type=int, default=50, help="held-out examples per behaviour")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args(argv)
    if args.train < 1 or args.eval_per_kind < 1:
        parser.error("--train and --eval-per-kind must be positive")
    n_train = write_jsonl(args.out / "train.jsonl", training_examples(args.train, args.seed))
    n_eval = write_jsonl(args.out / "eval.jsonl", eval_examples(args.eval_per_kind, args.seed + 1))
    print(f"wrote {n_train} training and {n_eval} held-out examples to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
