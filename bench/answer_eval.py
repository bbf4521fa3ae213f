"""Answer quality through the real pipeline: SQuAD-shaped questions asked through `RagAgent`.

The seed picks articles of the set; their paragraphs (one Markdown file each) are ingested into a
fresh index in a scratch folder (never `data/index`). Questions of those articles are asked
through `RagAgent` against the served model with the profile's settings, the semantic cache off
(every answer is generated) and a new conversation per question. Questions of articles left out
cannot be answered from the corpus: the right reply there is the prompt's no-answer reply.

Scores (bench.metrics): exact match and token F1 of the answer without its citation marks
(SQuAD normalisation, best over the gold answers), whether the answer contains a gold answer,
citation accuracy (a passage the answer cites as [n] contains a gold answer; an answer citing
nothing scores 0), retrieval hit@k of the gold paragraph for the same questions (k =
`index.top_k`, what the agent retrieves), the refusal rate on the unanswerable questions and the
false-refusal rate on the answerable ones. With `evaluation.judge_base_url` set (or
`--judge-url`), an LLM judge adds faithfulness and answer relevance (bench.judge).

    python -m bench.answer_eval [--data PATH] [--limit N] [--seed S] [--profile P] [--out PATH.json]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from bench.common import add_server_arguments, chat_server, machine, write_results
from bench.metrics import (
    citation_correct,
    contains_answer,
    exact_match,
    first_rank,
    hit_at_k,
    mrr,
    percentile,
    rate,
    token_f1,
)
from bench.squad import SHIPPED_SUBSET, SquadArticle, SquadQuestion, read_squad, write_corpus
from chains.context import cited_numbers, strip_citations
from chains.prompts import is_no_answer
from config import load_settings
from config.settings import Settings, SettingsError, from_root

if TYPE_CHECKING:
    from bench.judge import Judge, Verdict
    from chains import RagAgent, TurnResult
    from indexing.retrieval import HybridRetriever, Passage

DEFAULT_DATA = Path("../shared/data/squad-dev-v1.1.json")
DEFAULT_OUT = Path("bench/results/answer_eval.json")
QUESTIONS_PER_ARTICLE = 10
"""Default corpus size: one article ingested per this many answerable questions (at most half the set)."""
RATES = (
    "exact_match",
    "f1",
    "contains_gold",
    "citation_accuracy",
    "hit_at_k",
    "refusal_rate",
    "false_refusal_rate",
    "faithfulness",
    "answer_relevance",
)
"""The summary's scores between 0 and 1 (the plot's bars)."""
TINY_MODEL_MARKER = "tiny_model.json"
"""Written by serving.tiny_model into the offline model's folder (how it was built)."""


@dataclass(frozen=True)
class Asked:
    question: SquadQuestion
    answerable: bool


@dataclass
class Row:
    """One question's outcome, scored."""

    asked: Asked
    answer: str = ""
    failed: str | None = None
    refused: bool = False
    cited: tuple[int, ...] = ()
    cited_passages: tuple[str, ...] = ()
    gold_rank: int | None = None
    retrieved: tuple[str, ...] = ()
    """Texts of the top-k passages retrieved for the question: the judge's context (the prompt held
    those of them that fit `chains.context_token_budget`)."""
    total_s: float | None = None
    ttft_s: float | None = None
    completion_tokens: int = 0
    faithfulness: Verdict | None = None
    relevance: Verdict | None = None

    @property
    def answered(self) -> bool:
        """A generated answer that is not a refusal (what the judge scores)."""
        return self.failed is None and not self.refused

    def scores(self) -> dict[str, Any]:
        """Answer metrics (None for a question the corpus cannot answer) and the refusal flag."""
        golds = self.asked.question.answers
        if not self.asked.answerable:
            return dict.fromkeys(("exact_match", "f1", "contains_gold", "citation_correct"), None) | {
                "refused": self.refused
            }
        text = "" if self.failed else strip_citations(self.answer)  # a failed turn's text is no answer
        return {
            "exact_match": exact_match(text, golds),
            "f1": token_f1(text, golds),
            "contains_gold": contains_answer(text, golds),
            "citation_correct": citation_correct(self.cited_passages, golds),
            "refused": self.refused,
        }

    def to_dict(self, k: int) -> dict[str, Any]:
        q = self.asked.question
        return {
            "id": q.id,
            "question": q.text,
            "answerable": self.asked.answerable,
            "gold_answers": list(q.answers),
            "gold_passage": q.source if self.asked.answerable else None,
            "answer": self.answer,
            "failed": self.failed,
            "cited": list(self.cited),
            **self.scores(),
            "gold_rank": self.gold_rank,
            f"hit@{k}": self.gold_rank is not None if self.asked.answerable else None,
            "total_s": self.total_s,
            "ttft_s": self.ttft_s,
            "completion_tokens": self.completion_tokens,
            "faithfulness": self.faithfulness.to_dict() if self.faithfulness else None,
            "answer_relevance": self.relevance.to_dict() if self.relevance else None,
        }


def choose(
    articles: list[SquadArticle], n_articles: int, limit: int, unanswerable: int, seed: int
) -> tuple[list[SquadArticle], list[Asked]]:
    """The seed's articles to ingest, and `limit` questions of them plus `unanswerable` of the others."""
    rng = random.Random(seed)
    order = list(range(len(articles)))
    rng.shuffle(order)
    ingested = sorted(order[:n_articles])
    left_out = sorted(order[n_articles:])
    answerable = [q for a in ingested for q in articles[a].questions]
    others = [q for a in left_out for q in articles[a].questions]
    asked = [Asked(q, True) for q in rng.sample(answerable, min(limit, len(answerable)))]
    asked += [Asked(q, False) for q in rng.sample(others, min(unanswerable, len(others)))]
    return [articles[a] for a in ingested], asked


def passages_for(retriever: HybridRetriever, asked: list[Asked], k: int) -> dict[str, list[Passage]]:
    """Top-k retrieval per question (the agent's retriever and settings), by question id."""
    return {a.question.id: retriever.retrieve(a.question.text, k) for a in asked}


def cited_texts(
    retriever: HybridRetriever, question: str, result: TurnResult, numbers: list[int], shown: list[Passage]
) -> tuple[str, ...]:
    """Full texts of the passages the answer cites as [n] (sources carry only a snippet)."""
    by_id = {p.node_id: p.text for p in shown}
    texts = []
    for source in result.sources:
        if source.id not in numbers:
            continue
        if source.node_id not in by_id:  # found by a later search_documents call: fetch its file's chunks
            found = retriever.retrieve(question, 100, filters={"source": source.file})
            by_id.update((p.node_id, p.text) for p in found)
        texts.append(by_id.get(source.node_id, source.snippet))
    return tuple(texts)


async def ask_all(
    agent: RagAgent, retriever: HybridRetriever, asked: list[Asked], k: int, concurrency: int
) -> list[Row]:
    """Every question through the agent, `concurrency` at a time, with a progress line each."""
    shown = await asyncio.to_thread(passages_for, retriever, asked, k)
    gate = asyncio.Semaphore(concurrency)
    done = 0

    async def one(item: Asked) -> Row:
        nonlocal done
        row = Row(item)
        passages = shown[item.question.id]
        row.retrieved = tuple(p.text for p in passages)
        if item.answerable:
            row.gold_rank = first_rank([p.source for p in passages], item.question.source, k)
        async with gate:
            try:
                result = await agent.ainvoke(item.question.text, use_cache=False)
            except Exception as exc:  # one failed question is counted, not the end of the run
                row.failed = f"{type(exc).__name__}: {exc}"[:300]
            else:
                row.answer = result.answer
                row.total_s, row.ttft_s = result.timings.total_s, result.timings.ttft_s
                row.completion_tokens = result.tokens.completion_tokens
                if result.retrieval_only:
                    row.failed = f"retrieval only: {result.error}"
                else:
                    row.refused = is_no_answer(result.answer)
                    numbers = cited_numbers(result.answer)
                    row.cited = tuple(numbers)
                    row.cited_passages = await asyncio.to_thread(
                        cited_texts, retriever, item.question.text, result, numbers, passages
                    )
        done += 1
        print(f"[{done}/{len(asked)}] {_progress(row)}", file=sys.stderr, flush=True)
        return row

    return list(await asyncio.gather(*(one(a) for a in asked)))


def _progress(row: Row) -> str:
    kind = "answerable" if row.asked.answerable else "unanswerable"
    if row.failed:
        return f"{kind}: FAILED {row.failed}"
    s = row.scores()
    took = f"{row.total_s:.1f}s" if row.total_s is not None else "?"
    if not row.asked.answerable:
        return f"{kind}: refused={s['refused']} {took}"
    return f"{kind}: f1={s['f1']:.2f} contains={s['contains_gold']} cites_gold={s['citation_correct']} {took}"


def judge_rows(judge: Judge, rows: list[Row]) -> None:
    """Faithfulness (to the retrieved passages) and relevance of every generated, non-refusing answer
    to an answerable question."""
    targets = [r for r in rows if r.asked.answerable and r.answered]
    for i, row in enumerate(targets, start=1):
        question = row.asked.question.text
        row.faithfulness = judge.faithfulness(question, row.answer, row.retrieved)
        row.relevance = judge.relevance(question, row.answer)
        print(
            f"[judge {i}/{len(targets)}] faithfulness {row.faithfulness.status}, relevance {row.relevance.status}",
            file=sys.stderr,
            flush=True,
        )


def summarize(rows: list[Row], k: int, model: dict[str, Any], judged: dict[str, Any] | None) -> dict[str, Any]:
    answerable = [r for r in rows if r.asked.answerable]
    unanswerable = [r for r in rows if not r.asked.answerable]
    scored = [r.scores() for r in answerable]
    times = [r.total_s for r in rows if r.total_s is not None]
    return {
        "exact_match": rate(s["exact_match"] for s in scored),
        "f1": rate(s["f1"] for s in scored),
        "contains_gold": rate(s["contains_gold"] for s in scored),
        "citation_accuracy": rate(s["citation_correct"] for s in scored),
        "citation_rate": rate(bool(r.cited) for r in answerable),
        "hit_at_k": hit_at_k([r.gold_rank for r in answerable], k),
        "k": k,
        "mrr_at_k": mrr([r.gold_rank for r in answerable]),
        "refusal_rate": rate(r.refused for r in unanswerable),
        "false_refusal_rate": rate(r.refused for r in answerable),
        "faithfulness": judged["faithfulness"]["mean"] if judged else None,
        "answer_relevance": judged["answer_relevance"]["mean"] if judged else None,
        "questions": len(rows),
        "answerable": len(answerable),
        "unanswerable": len(unanswerable),
        "failed": sum(r.failed is not None for r in rows),
        "turn_s_p50": percentile(times, 50),
        "turn_s_p95": percentile(times, 95),
        **model,
    }


def served_model(settings: Settings) -> dict[str, Any]:
    """The model that answered, as the server names it, and what the offline model kit recorded about it."""
    listed = httpx.get(f"{settings.llm.base_url}/models", timeout=10.0).raise_for_status().json()["data"]
    entry = next((m for m in listed if m["id"] == settings.llm.model), listed[0])
    root = entry.get("root") or entry["id"]
    marker = Path(root) / TINY_MODEL_MARKER
    kit = json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else None
    note = None
    if kit is not None:
        note = (
            "the offline tiny model (serving.tiny_model; model_kit says how it was built): an extractive toy at best; "
            "its scores measure the pipeline's plumbing, not language understanding"
        )
    return {"model": entry["id"], "model_path": root, "model_kit": kit, "model_note": note}


def _undefined_as_null(value: Any) -> Any:
    """NaN (a rate over nothing) as JSON null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _undefined_as_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_undefined_as_null(v) for v in value]
    return value


def table(result: dict[str, Any]) -> str:
    s = result["summary"]

    def fmt(value: Any) -> str:
        return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)

    rows = [
        ("exact match", s["exact_match"], s["answerable"]),
        ("token F1", s["f1"], s["answerable"]),
        ("contains a gold answer", s["contains_gold"], s["answerable"]),
        ("citation accuracy", s["citation_accuracy"], s["answerable"]),
        ("answers citing a passage", s["citation_rate"], s["answerable"]),
        (f"retrieval hit@{s['k']}", s["hit_at_k"], s["answerable"]),
        ("refusal rate (unanswerable)", s["refusal_rate"], s["unanswerable"]),
        ("false refusals (answerable)", s["false_refusal_rate"], s["answerable"]),
        ("faithfulness (judge)", s["faithfulness"], _judged(result["judge"], "faithfulness")),
        ("answer relevance (judge)", s["answer_relevance"], _judged(result["judge"], "answer_relevance")),
    ]
    lines = [
        f"Answer quality: {s['model']} ({s['model_path']}), profile {result['config']['profile']}, "
        f"{s['questions']} questions ({s['failed']} failed), load {result['load_before'][0]:.1f} -> "
        f"{result['load_after'][0]:.1f}",
        "",
        "| metric | value | n |",
        "| --- | --- | --- |",
        *(f"| {name} | {fmt(value)} | {n} |" for name, value, n in rows),
    ]
    if s["model_note"]:
        lines += ["", f"Model: {s['model_note']}."]
    return "\n".join(lines)


def _judged(judged: dict[str, Any] | None, metric: str) -> str:
    """How many verdicts of a judge metric counted, and what became of the others."""
    if judged is None:
        return "judge off"
    c = judged[metric]
    return f"{c['ok']} of {c['n']} ({c['nan']} NaN, {c['timeout']} timeouts, {c['error']} errors)"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["summary"]
    names = list(RATES)
    values = [s[n] if s[n] is not None else 0.0 for n in names]
    fig, ax = plt.subplots(figsize=(8, 4))
    bars = ax.barh(names[::-1], values[::-1])
    ax.bar_label(bars, labels=["n/a" if s[n] is None else f"{s[n]:.2f}" for n in names[::-1]], fontsize=7)
    ax.set_xlim(0, 1.1)
    ax.set_title(f"Answer quality, {s['model']}, {s['questions']} questions", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[SquadArticle]]:
    """The arguments and the set's articles; bad values end here with a message naming them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help=f"SQuAD v1.1-shaped JSON (default: {DEFAULT_DATA}, else the subset shipped in data/squad/)",
    )
    parser.add_argument("--limit", type=int, default=100, help="answerable questions asked (default 100)")
    parser.add_argument(
        "--unanswerable", type=int, default=None, help="questions of left-out articles (default: a quarter of --limit)"
    )
    parser.add_argument(
        "--articles",
        type=int,
        default=None,
        help=f"articles ingested (default: one per {QUESTIONS_PER_ARTICLE} questions, at most half the set)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", default=None, help="settings profile (default: the active one)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="result JSON (a PNG is written next to it)")
    parser.add_argument("--concurrency", type=int, default=4, help="questions in flight at once")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep the eval index here, one folder per choice of articles, so a re-run skips the ingest "
        "(default: a temporary folder)",
    )
    parser.add_argument("--judge-url", default=None, help="LLM judge endpoint (overrides evaluation.judge_base_url)")
    add_server_arguments(parser)
    args = parser.parse_args(argv)
    if args.limit < 1:
        parser.error(f"--limit must be at least 1, not {args.limit}")
    if args.unanswerable is None:
        args.unanswerable = max(1, args.limit // 4)
    if args.unanswerable < 0:
        parser.error(f"--unanswerable must be 0 or more, not {args.unanswerable}")
    if args.concurrency < 1:
        parser.error(f"--concurrency must be at least 1, not {args.concurrency}")
    args.out = from_root(args.out)
    if args.data is None:
        args.data = from_root(DEFAULT_DATA)
        if not args.data.is_file():
            print(f"{args.data} not found: using the shipped subset {SHIPPED_SUBSET}", file=sys.stderr)
            args.data = SHIPPED_SUBSET
    args.data = from_root(args.data)
    if not args.data.is_file():
        parser.error(f"{args.data} not found (SQuAD v1.1 dev: see ../shared/data/SOURCES.md; any set of its shape)")
    try:
        articles = read_squad(args.data)
    except ValueError as exc:
        parser.error(str(exc))
    if len(articles) < 2:
        parser.error(f"{args.data} has {len(articles)} article(s): at least 2 are needed, one to leave out")
    if args.articles is None:
        args.articles = min(len(articles) // 2, math.ceil(args.limit / QUESTIONS_PER_ARTICLE))
    if not 1 <= args.articles < len(articles):
        parser.error(f"--articles must be between 1 and {len(articles) - 1} for this set, not {args.articles}")
    return args, articles


def main(argv: list[str] | None = None) -> int:
    args, articles = parse_args(argv)
    try:
        settings = load_settings(args.profile)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.judge_url:
        settings.evaluation.judge_base_url = args.judge_url
    ingested, asked = choose(articles, args.articles, args.limit, args.unanswerable, args.seed)
    with tempfile.TemporaryDirectory(prefix="answer-eval-") as scratch:
        home = Path(scratch) if args.workdir is None else index_folder(args.workdir, settings, args.data, ingested)
        settings.chains.conversations_db = Path(scratch) / "conversations.sqlite"  # every run starts afresh
        result = run(settings, args, ingested, asked, home)
    clean = _undefined_as_null(result)
    write_results(clean, args.out.parent, args.out.stem, plot, table(clean))
    return 1 if result["summary"]["failed"] == len(asked) else 0


def index_folder(workdir: Path, settings: Settings, data: Path, ingested: list[SquadArticle]) -> Path:
    """A folder of `workdir` for exactly these articles and index settings: another choice never
    finds a previous choice's passages in its index."""
    index = settings.index
    chunking = [index.embed_model, index.embed_backend, index.chunk_size, index.chunk_overlap]
    key = json.dumps([str(data), [a.title for a in ingested], *chunking])
    return from_root(workdir) / hashlib.sha256(key.encode()).hexdigest()[:16]


def run(
    settings: Settings, args: argparse.Namespace, ingested: list[SquadArticle], asked: list[Asked], home: Path
) -> dict[str, Any]:
    """Ingest the chosen articles into `home` (incremental: a kept index is reused), ask every
    question, score; the result dict."""
    from chains import RagAgent
    from indexing.embeddings import load_embedding
    from indexing.pipeline import ingest
    from indexing.retrieval import open_retriever

    corpus = home / "corpus"
    paragraphs = write_corpus(ingested, corpus)
    settings.index.docs_dir, settings.index.index_dir = corpus, home / "index"
    settings.cache.enabled, settings.cache.dir = False, home / "cache"  # every answer generated
    k = settings.index.top_k
    embed = load_embedding(settings.index.embed_model, settings.index.embed_batch_size, settings.index.embed_backend)
    print(f"ingesting {paragraphs} paragraphs of {len(ingested)} articles ...", file=sys.stderr, flush=True)
    report = ingest(settings.index, progress=False, embed_model=embed)
    print(report.summary(), file=sys.stderr, flush=True)
    load_before = os.getloadavg()
    started = time.perf_counter()
    with (
        open_retriever(settings.index, embed_model=embed) as retriever,
        chat_server(settings, args.base_url, args.model) as server,
    ):
        model = served_model(settings)
        print(f"asking {len(asked)} questions of {model['model']} at {server} ...", file=sys.stderr, flush=True)
        with RagAgent.from_settings(settings, retriever=retriever) as agent:
            rows = asyncio.run(ask_all(agent, retriever, asked, k, args.concurrency))
        judged = judge(settings, rows, embed)
    load_after = os.getloadavg()
    return {
        "summary": summarize(rows, k, model, judged),
        "judge": judged,
        "config": {
            "profile": settings.profile,
            "data": str(args.data),
            "seed": args.seed,
            "articles": [a.title for a in ingested],
            "paragraphs": paragraphs,
            "chunks": report.chunks,
            "cache": "off: every answer generated, one new conversation per question",
            "concurrency": args.concurrency,
            "server": server,
            "llm": {"max_tokens": settings.llm.max_tokens, "temperature": settings.llm.temperature},
            "context_token_budget": settings.chains.context_token_budget,
        },
        "machine": machine(),
        "load_before": load_before,
        "load_after": load_after,
        "seconds": round(time.perf_counter() - started, 1),
        "rows": [r.to_dict(k) for r in rows],
    }


def judge(settings: Settings, rows: list[Row], embed: Any) -> dict[str, Any] | None:
    """Judge verdicts' summary when a judge endpoint is configured, else None."""
    if settings.evaluation.judge_base_url is None:
        return None
    from bench.judge import Judge, summarize_verdicts

    judge = Judge(settings.evaluation, embed.get_text_embedding_batch)
    try:
        judge_rows(judge, rows)
    finally:
        judge.close()
    judged = [r for r in rows if r.faithfulness is not None and r.relevance is not None]
    return {
        "endpoint": judge.base_url,
        "model": judge.model,
        "timeout_s": settings.evaluation.judge_timeout_s,
        "faithfulness": summarize_verdicts([r.faithfulness for r in judged if r.faithfulness]),
        "answer_relevance": summarize_verdicts([r.relevance for r in judged if r.relevance]),
    }


if __name__ == "__main__":
    raise SystemExit(main())
