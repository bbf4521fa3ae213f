"""Semantic-cache lookup and store latency with thousands of cached questions.

Fills one scope with `--entries` questions (SQuAD dev questions plus this project's own cached
questions), then, in interleaved rounds, times stores of new questions and lookups of paraphrases
of cached questions (different text: the question-embedding memo is cold, so each lookup embeds),
and the bare embedding of the same paraphrases. Answers the issue's "does a store grow with the
cache" and "where does a hit's time go" (`--profile` prints a cProfile of the hits).

    python -m bench.cache_speed [--entries 4000]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import parse_args
from bench.metrics import percentile
from chains.cache import CachedAnswer, CacheScope, SemanticCache
from config import load_settings
from config.settings import REPO_ROOT
from indexing.embeddings import load_embedding

SCOPE = CacheScope(index_version="bench", model="bench", prompt_version="bench")
DEFAULT_SQUAD = REPO_ROOT.parent / "shared" / "data" / "squad-dev-v1.1.json"


class Prefilled:
    """The model, answering the fill questions from one batched pass (the fill is not timed)."""

    def __init__(self, model: Any, texts: Sequence[str]) -> None:
        self.model = model
        self.known = dict(zip(texts, model.get_text_embedding_batch(list(texts)), strict=True))

    def get_query_embedding(self, text: str) -> list[float]:
        known: list[float] | None = self.known.get(text)
        return known if known is not None else self.model.get_query_embedding(text)


def squad_questions(path: Path) -> list[str]:
    data = json.loads(path.read_text(encoding="utf-8"))["data"]
    return list(dict.fromkeys(q["question"].strip() for a in data for p in a["paragraphs"] for q in p["qas"]))


def own_groups(eval_dir: Path) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = json.loads((eval_dir / "near_misses.json").read_text(encoding="utf-8"))["groups"]
    return groups


def ms(xs: Sequence[float]) -> dict[str, float]:
    return (
        {"n": len(xs), "p50_ms": 1000 * statistics.median(xs), "p99_ms": 1000 * percentile(xs, 99)} if xs else {"n": 0}
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3, help="passes over the paraphrases / new questions")
    parser.add_argument("--squad", type=Path, default=DEFAULT_SQUAD)
    parser.add_argument("--eval-dir", type=Path, default=REPO_ROOT / "data" / "cache_eval")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "cache_speed.json")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the timed hits")
    parser.add_argument("--precomputed", action="store_true", help="embed everything up front: time the cache alone")
    parser.add_argument(
        "--store-dir", type=Path, help="cache folder to fill (or reuse when already filled) instead of a temporary one"
    )
    args = parse_args(parser, argv, quick={"entries": 500, "rounds": 1})
    settings = load_settings(None)
    model = load_embedding(settings.index.embed_model, settings.index.embed_batch_size)
    groups = own_groups(args.eval_dir)
    squad = squad_questions(args.squad)
    random.Random(7).shuffle(squad)
    cached = [g["cached"] for g in groups]
    fill = squad[: args.entries - len(cached)]
    fresh = squad[args.entries : args.entries + 40 * args.rounds]
    paraphrases = [p for g in groups for p in g["paraphrases"]]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="cache-speed-") as tmp:
        folder = args.store_dir or Path(tmp)
        cache = SemanticCache(folder, model, settings.index.embed_model, settings.cache.similarity_threshold, 10**9)
        started = time.perf_counter()
        if cache.stats().entries < args.entries:
            filler = Prefilled(model, [*fill, *cached])
            threshold = settings.cache.similarity_threshold
            cache = SemanticCache(folder, filler, settings.index.embed_model, threshold, 10**9)
            for q in [*fill, *cached]:
                cache.store(q, SCOPE, CachedAnswer(f"answer to: {q}", [], time.time()))
            cache.close()
        fill_s = time.perf_counter() - started
        timed_model: Any = model
        if args.precomputed:  # time the store and search alone: every embedding is a dict read
            rounds = [
                p if r == 0 else f"{p.rstrip('?')}{' ?' if r == 1 else '??'}"
                for r in range(args.rounds)
                for p in paraphrases
            ]
            timed_model = Prefilled(model, [*rounds, *fresh])
        cache = SemanticCache(
            folder, timed_model, settings.index.embed_model, settings.cache.similarity_threshold, 10**9
        )
        store_s: list[float] = []
        hit_s: list[float] = []
        miss_s: list[float] = []
        embed_s: list[float] = []
        profiler = cProfile.Profile()
        for r in range(args.rounds):
            batch = fresh[40 * r : 40 * (r + 1)]
            for i, p in enumerate(paraphrases):
                # A different spelling per round keeps the question memo cold.
                text = p if r == 0 else f"{p.rstrip('?')}{' ?' if r == 1 else '??'}"
                t0 = time.perf_counter()
                model.get_query_embedding(text + " (probe)")
                embed_s.append(time.perf_counter() - t0)
                if args.profile:
                    profiler.enable()
                t0 = time.perf_counter()
                found = cache.lookup(text, SCOPE)
                elapsed = time.perf_counter() - t0
                if args.profile:
                    profiler.disable()
                hit = getattr(found, "hit", found)
                (hit_s if hit is not None else miss_s).append(elapsed)
                if i < len(batch):
                    t0 = time.perf_counter()
                    cache.store(batch[i], SCOPE, CachedAnswer("new", [], time.time()))
                    store_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        cache.close()
        close_s = time.perf_counter() - t0
        entries = cache.stats().entries
    result = {
        "entries": entries,
        "fill_s": fill_s,
        "hit": ms(hit_s),
        "miss": ms(miss_s),
        "store": ms(store_s),
        "embedding_alone": ms(embed_s),
        "close_s": close_s,
        "threshold": settings.cache.similarity_threshold,
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_before_after": [load_before[0], os.getloadavg()[0]],
            "python": platform.python_version(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1), result["machine"])
    if args.profile:
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("cumulative").print_stats(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
