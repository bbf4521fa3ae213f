"""`python -m chains`: ask one question, chat, or inspect and clear the semantic cache."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TextIO

import openai

from chains.agent import RagAgent
from chains.conversations import ConversationStoreError
from chains.questions import QuestionError
from chains.results import TurnResult
from config.settings import PROFILES, SettingsError, load_settings
from indexing.errors import IndexingError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m chains", description="Chat with the indexed documents.")
    parser.add_argument("--profile", choices=PROFILES, help="settings profile (default: RAG_PROFILE or balanced)")
    commands = parser.add_subparsers(dest="command", required=True)

    ask = commands.add_parser("ask", help="answer one question, streaming, then list sources and timings")
    ask.add_argument("question")
    chat = commands.add_parser("chat", help="interactive chat (reads one question per line when not a TTY)")
    for sub in (ask, chat):
        sub.add_argument("--conversation", metavar="ID", help="continue this conversation (default: a new one)")
        sub.add_argument("--no-cache", action="store_true", help="neither read nor write the semantic cache")
    ask.add_argument("--json", action="store_true", help="print only the result as JSON")

    commands.add_parser("cache-stats", help="hits, misses, hit rate, time saved, entries")
    commands.add_parser("cache-clear", help="drop every cached answer")
    return parser


def _report(result: TurnResult, out: TextIO) -> None:
    """Sources, notices and timings after a streamed answer."""
    origin = " (from the semantic cache)" if result.cached else " (retrieval only)" if result.retrieval_only else ""
    print(f"\n\nSources{origin}:", file=out)
    for source in result.sources:
        print(f"  [{source.id}] {source.label()}  (chunk {source.chunk}, score {source.score:.3f})", file=out)
    if not result.sources:
        print("  (none)", file=out)
    for notice in result.notices:
        print(f"Note: {notice}", file=out)
    t, tokens = result.timings, result.tokens
    ttft = "-" if t.ttft_s is None else f"{t.ttft_s * 1000:.0f} ms"
    print(
        f"Timings: cache {t.cache_lookup_s * 1000:.0f} ms · condense {t.condense_s * 1000:.0f} ms · "
        f"retrieval {t.retrieval_s * 1000:.0f} ms · first token {ttft} · generation {t.generation_s * 1000:.0f} ms · "
        f"total {t.total_s * 1000:.0f} ms · tokens {tokens.prompt_tokens} in / {tokens.completion_tokens} out",
        file=out,
    )


def _answer(agent: RagAgent, question: str, conversation: str | None, use_cache: bool, out: TextIO) -> TurnResult:
    result: TurnResult | None = None
    for piece in agent.stream(question, conversation, use_cache=use_cache):
        if isinstance(piece, TurnResult):
            result = piece
        else:
            out.write(piece)
            out.flush()
    assert result is not None
    _report(result, out)
    return result


def _chat(agent: RagAgent, conversation: str | None, use_cache: bool, out: TextIO) -> None:
    interactive = sys.stdin.isatty()
    if interactive:
        print("Ask about your documents. /new starts a new conversation, /exit (or Ctrl-D) quits.", file=out)
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            return
        question = line.strip()
        if question in {"/exit", "/quit"}:
            return
        if question == "/new":
            conversation = None
            print("(new conversation)", file=out)
            continue
        if not question:
            continue
        if not interactive:
            print(f"you> {question}", file=out)
        try:
            conversation = _answer(agent, question, conversation, use_cache, out).conversation_id
        except QuestionError as exc:
            print(f"error: {exc}", file=sys.stderr)
        print(file=out)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out = sys.stdout
    try:
        settings = load_settings(args.profile)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command in {"cache-stats", "cache-clear"}:
        from chains.cache import SemanticCache

        cache = SemanticCache.from_settings(
            settings.cache,
            settings.index.embed_model,
            settings.index.embed_batch_size,
            embed_backend=settings.index.embed_backend,
        )
        if args.command == "cache-clear":
            cache.clear()
            print(f"semantic cache cleared ({cache.directory})", file=out)
        else:
            print(json.dumps(cache.stats().__dict__, indent=2), file=out)
        cache.close()
        return 0
    try:
        agent = RagAgent.from_settings(settings)
    except (IndexingError, ConversationStoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with agent:
        try:
            if args.command == "ask":
                if args.json:
                    result = agent.invoke(args.question, args.conversation, use_cache=not args.no_cache)
                    print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False), file=out)
                else:
                    _answer(agent, args.question, args.conversation, not args.no_cache, out)
            else:
                _chat(agent, args.conversation, not args.no_cache, out)
        except QuestionError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except openai.APIStatusError as exc:
            print(f"error: the model server refused the request: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
    return 0
