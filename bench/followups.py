"""Follow-up benchmark: does a rewrite help or wreck retrieval, and do the checks keep it safe?

    python -m bench.followups [--base-url URL] [--set PATH]

Over the sample corpus (data/docs, indexed into an ignored work folder) and the hand-written
follow-up set bench/data/followups.json (conversations of 2-4 turns; every follow-up has a human
standalone rewrite, a needs-history label and the passages that answer it), hit@5 of retrieval:

- `original`: the question as asked; `rewrite`: the rewrite alone (what the agent did before the
  checks); `both`: the two result lists fused; `checked`: what the agent does now
  (`chains.followups`: no rewrite when the question names its subject, the rewrite refused when it
  fails the checks, otherwise both fused);

each with three kinds of rewrite: (a) `gold`, the human rewrites; (b) `model`, what the offline
random-weights model returns to the agent's real condense prompt (through a vLLM server: the one
at --base-url, else one started here); (c) `noise`, the question plus eight unrelated corpus
words (garbage that passes a word-overlap check).

The set is split by conversation: odd-numbered conversations tune the rule thresholds (a grid
over `RewriteRules` and fused vs rewrite-only, maximising the mean `checked` hit@5 over the
three kinds), even-numbered ones report. The figures reported are for the shipped defaults,
which the JSON shows next to the tuned choice. Results: bench/results/followups.json and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import json
import logging
import os
import random
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from bench.common import add_server_arguments, chat_server, machine, parse_args, write_results
from chains.condense import condense_question
from chains.followups import DEFAULT_RULES, RewriteRules, fuse, needs_history, rejection, words
from chains.llm import make_chat_model
from chains.tools import make_search_tool
from config import load_settings
from config.settings import REPO_ROOT, Settings
from indexing.retrieval import HybridRetriever, Passage

log = logging.getLogger("bench.followups")

RESULTS = REPO_ROOT / "bench" / "results"
DEFAULT_SET = REPO_ROOT / "bench" / "data" / "followups.json"
DEFAULT_WORKDIR = REPO_ROOT / ".run" / "bench-followups"
KINDS = ("gold", "model", "noise")
VARIANTS = ("original", "rewrite", "both", "checked")
K = 5


@dataclass
class FollowUp:
    """One follow-up turn with its history and the rewrites measured for it."""

    conversation: str
    half: str
    """"tune" (odd conversation numbers) or "report" (even)."""
    question: str
    needs_history: bool
    history: list[BaseMessage]
    gold: list[tuple[str, str]]
    rewrites: dict[str, str]


def load_set(path: Path) -> list[FollowUp]:
    """The follow-ups of every conversation, each with the turns before it as history."""
    data = json.loads(path.read_text(encoding="utf-8"))
    items: list[FollowUp] = []
    for conversation in data["conversations"]:
        number = int(re.sub(r"\D", "", conversation["id"]))
        half = "tune" if number % 2 else "report"
        history: list[BaseMessage] = []
        for turn in conversation["turns"]:
            if "gold" in turn:
                gold = [(file, evidence) for file, evidence in turn["gold"]]
                items.append(
                    FollowUp(
                        conversation["id"],
                        half,
                        turn["question"],
                        bool(turn["needs_history"]),
                        list(history),
                        gold,
                        {"gold": turn["rewrite"]},
                    )
                )
                answer = f"{gold[0][1]} [1]."  # the history's answer: the passage that answers it
            else:
                answer = turn["answer"]
            history += [HumanMessage(turn["question"]), AIMessage(answer)]
    return items


def _normal(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def is_hit(passages: Sequence[Passage], gold: Sequence[tuple[str, str]]) -> bool:
    """Whether a passage of a gold file contains that file's evidence (case and spacing ignored)."""
    return any(p.source == file and _normal(evidence) in _normal(p.text) for p in passages for file, evidence in gold)


def check_gold(retriever: HybridRetriever, items: Sequence[FollowUp]) -> None:
    """Every gold evidence must be in some chunk of its file, or the set is out of date."""
    for item in items:
        for file, evidence in item.gold:
            found = retriever.retrieve(evidence, top_k=50, filters={"source": file}, mode="bm25")
            if not any(_normal(evidence) in _normal(p.text) for p in found):
                raise SystemExit(f"{item.conversation}: evidence {evidence!r} is in no chunk of {file}")


def noise_rewrite(question: str, vocabulary: Sequence[str], rng: random.Random) -> str:
    """The question followed by eight corpus words: plausible-looking garbage a word check passes."""
    return f"{question} {' '.join(rng.sample(list(vocabulary), 8))}"


async def model_rewrites(settings: Settings, retriever: HybridRetriever, items: Sequence[FollowUp]) -> list[str]:
    """What the served model answers to the agent's condense prompt, one follow-up at a time."""
    model = make_chat_model(settings.llm)
    tools = [make_search_tool(retriever, settings.index.top_k)]
    out = []
    try:
        for item in items:
            out.append(
                await condense_question(
                    model,
                    tools,
                    item.history,
                    item.question,
                    max_question_tokens=settings.chains.max_question_tokens,
                )
            )
    finally:
        if model.http_async_client is not None:
            await model.http_async_client.aclose()
    return out


def passages_for(
    variant: str,
    item: FollowUp,
    rewrite: str,
    get: Callable[[str], list[Passage]],
    *,
    rules: RewriteRules,
    fused: bool,
) -> list[Passage]:
    """What retrieval returns for `item` under `variant` (`checked` follows the agent)."""
    question = item.question
    if variant == "original":
        return get(question)
    if variant == "rewrite":
        return get(rewrite)
    if variant == "both":
        return fuse(get(rewrite), get(question), K)
    if not needs_history(question, rules) or rejection(question, rewrite, rules) is not None or rewrite == question:
        return get(question)
    return fuse(get(rewrite), get(question), K) if fused else get(rewrite)


def hit_rates(
    items: Sequence[FollowUp], get: Callable[[str], list[Passage]], rules: RewriteRules, fused: bool = True
) -> dict[str, dict[str, float]]:
    """hit@5 per rewrite kind and variant."""
    return {
        kind: {
            variant: statistics.fmean(
                is_hit(passages_for(variant, i, i.rewrites[kind], get, rules=rules, fused=fused), i.gold) for i in items
            )
            for variant in VARIANTS
        }
        for kind in KINDS
    }


def rule_stats(items: Sequence[FollowUp], rules: RewriteRules) -> dict[str, Any]:
    """How the needs-history rule agrees with the labels, and how often each kind of rewrite is used."""
    flagged = [needs_history(i.question, rules) for i in items]
    labelled = [i.needs_history for i in items]
    used = {
        kind: statistics.fmean(
            f and rejection(i.question, i.rewrites[kind], rules) is None and i.rewrites[kind] != i.question
            for f, i in zip(flagged, items, strict=True)
        )
        for kind in KINDS
    }
    reasons: dict[str, dict[str, int]] = {}
    for kind in KINDS:
        counts: dict[str, int] = {}
        for i in items:
            reason = rejection(i.question, i.rewrites[kind], rules)
            key = "accepted" if reason is None else reason.split(" (")[0]
            counts[key] = counts.get(key, 0) + 1
        reasons[kind] = counts
    return {
        "follow_ups": len(items),
        "labelled_needs_history": sum(labelled),
        "rule_needs_history": sum(flagged),
        "rule_agrees_with_label": statistics.fmean(f == lab for f, lab in zip(flagged, labelled, strict=True)),
        "labelled_follow_ups_the_rule_misses": [
            i.question for f, i in zip(flagged, items, strict=True) if i.needs_history and not f
        ],
        "rewrite_used_share": used,
        "check_outcome_when_asked": reasons,
    }


def tune(items: Sequence[FollowUp], get: Callable[[str], list[Passage]]) -> dict[str, Any]:
    """The grid point with the best mean `checked` hit@5 over the kinds; ties go to the rule that
    agrees most with the needs-history labels, then to the one that keeps most human rewrites, then
    to the loosest length limit (it refuses the fewest good rewrites this half could not show)."""
    best: dict[str, Any] | None = None
    for min_words, ratio, extra, fused in itertools.product((1, 2, 3), (2.0, 3.0, 4.0), (6, 12, 20), (True, False)):
        rules = RewriteRules(min_words, ratio, extra)
        rates = hit_rates(items, get, rules, fused)
        stats = rule_stats(items, rules)
        key = (
            round(statistics.fmean(rates[kind]["checked"] for kind in KINDS), 9),
            round(stats["rule_agrees_with_label"], 9),
            round(stats["rewrite_used_share"]["gold"], 9),
            ratio,
            extra,
        )
        if best is None or key > best["key"]:
            best = {"rules": asdict(rules), "fused": fused, "key": key}
    assert best is not None
    key = best.pop("key")
    return {**best, "checked_hit_at_5_mean": key[0], "rule_agrees_with_label": key[1], "gold_rewrites_used": key[2]}


def build_index(settings: Settings) -> int:
    from indexing.pipeline import ingest

    report = ingest(settings.index, [REPO_ROOT / "data" / "docs"], prune=True, progress=False)
    return report.chunks


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = result["report"]["hit_at_5"]
    fig, ax = plt.subplots(figsize=(9, 4.4))
    width = 0.2
    colors = {"original": "tab:gray", "rewrite": "tab:red", "both": "tab:orange", "checked": "tab:green"}
    for n, variant in enumerate(VARIANTS):
        xs = [k + (n - 1.5) * width for k in range(len(KINDS))]
        values = [rates[kind][variant] for kind in KINDS]
        ax.bar(xs, values, width, label=variant, color=colors[variant])
        for x, v in zip(xs, values, strict=True):
            ax.text(x, v + 0.01, f"{v:.2f}", ha="center", fontsize=7)
    ax.set_xticks(range(len(KINDS)))
    ax.set_xticklabels(["(a) human rewrites", "(b) offline model's rewrites", "(c) question + noise"])
    ax.set_ylim(0, 1.2)
    ax.set_ylabel("hit@5")
    n = result["report"]["rules"]["follow_ups"]
    ax.set_title(f"Follow-up retrieval, report half ({n} follow-ups; thresholds tuned on the other half)")
    ax.legend(ncol=4, fontsize=8, loc="upper center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(result: dict[str, Any]) -> str:
    lines = [
        "| rewrites | original | rewrite alone | both fused | checked (shipped) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for kind in KINDS:
        row = result["report"]["hit_at_5"][kind]
        lines.append(f"| {kind} | " + " | ".join(f"{row[v]:.3f}" for v in VARIANTS) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.followups", description=__doc__.split("\n\n")[0])
    add_server_arguments(parser)
    parser.add_argument("--set", type=Path, default=DEFAULT_SET, help="the follow-up set (JSON)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="index of data/docs (reused)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parse_args(parser, argv, quick={"workdir": DEFAULT_WORKDIR.with_name("bench-followups-quick")})
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("httpx", "chains", "chromadb"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    work = args.workdir.resolve()
    settings = load_settings("test", index={"index_dir": work / "index", "top_k": K})
    chunks = build_index(settings)
    from indexing.retrieval import open_retriever

    retriever = open_retriever(settings.index)
    items = load_set(args.set)
    check_gold(retriever, items)

    load_before = os.getloadavg()
    with chat_server(settings, args.base_url, args.model) as server:
        started = time.perf_counter()
        for item, text in zip(items, asyncio.run(model_rewrites(settings, retriever, items)), strict=True):
            item.rewrites["model"] = text
        rewrite_s = time.perf_counter() - started
    rng = random.Random(7)
    vocabulary = sorted({w for i in items for w in words(i.rewrites["gold"]) if len(w) > 3})
    for item in items:
        item.rewrites["noise"] = noise_rewrite(item.question, vocabulary, rng)

    @functools.cache
    def get(query: str) -> list[Passage]:
        """Each query retrieved once (the variants share most queries)."""
        return retriever.retrieve(query, top_k=K) if query.strip() else []

    halves = {half: [i for i in items if i.half == half] for half in ("tune", "report")}
    tuned = tune(halves["tune"], get)
    result: dict[str, Any] = {
        "tuned_on_tune_half": tuned,
        "shipped_rules": {**asdict(DEFAULT_RULES), "fused": True},
        "shipped_equals_tuned": tuned["rules"] == asdict(DEFAULT_RULES) and tuned["fused"],
    }
    for half, part in halves.items():
        result[half] = {
            "conversations": len({i.conversation for i in part}),
            "hit_at_5": hit_rates(part, get, DEFAULT_RULES),
            "rules": rule_stats(part, DEFAULT_RULES),
        }
    result["rewrites"] = [
        {"conversation": i.conversation, "half": i.half, "question": i.question, **i.rewrites} for i in items
    ]
    result["setup"] = {
        "index": {"docs": "data/docs", "chunks": chunks, "top_k": K},
        "set": str(args.set.relative_to(REPO_ROOT) if args.set.is_relative_to(REPO_ROOT) else args.set),
        "model": settings.llm.model,
        "server": server,
        "model_rewrites_s": rewrite_s,
        "load_average_1m_before_after": [load_before[0], os.getloadavg()[0]],
        **machine(),
        "hit": "a top-5 passage of a gold file containing its evidence text",
    }
    write_results(result, args.out, "followups", plot, table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
