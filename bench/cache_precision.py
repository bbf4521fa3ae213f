"""Semantic-cache precision and hit rate, tuned on one split and reported on another.

Caches the distinct `origin`s of a pairs file (GPTCache's 999 paraphrase pairs), our own cached
questions (`data/cache_eval/near_misses.json`) and the `a` side of our hard pairs
(`data/cache_eval/hard_pairs.json`), then asks every paraphrase, near miss, unrelated question
and hard-pair `b`. Every question belongs to the TUNE or the REPORT split by a hash of the cached
question it is written against (so paraphrases of one question never straddle the split). The
threshold is chosen on TUNE only; the README figures are REPORT's at that threshold.

Columns are kept apart, each with its own denominator: paraphrase hit rate (GPTCache's pairs and
ours separately), wrong hits among the pairs' hits, adversarial negatives answered (near misses
and unrelated questions; any hit is wrong), and on the hard pairs: duplicates answered and wrong
hits as a share of all hits on hard-pair questions.

The cache is the real `chains.cache.SemanticCache` (GPTCache sqlite + faiss on disk, MiniLM). One
pass at the lowest threshold records each question's best accepted candidate; a hit at threshold
t is "that candidate's cosine >= t", so every threshold comes from the same pass. Passes without
some guards show what each buys; a last pass with the shipped settings checks the derivation and
times lookups (embedding included).

    python -m bench.cache_precision ../shared/data/cache_pairs.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bench.common import parse_args
from bench.metrics import percentile
from chains.cache import CachedAnswer, CacheScope, GuardName, SemanticCache
from config import load_settings
from config.settings import REPO_ROOT
from indexing.embeddings import load_embedding

SCOPE = CacheScope(index_version="bench", model="bench", prompt_version="bench")
# GPTCache's own run on the same file (sqlite + faiss + ONNX embedding, SearchDistanceEvaluation),
# from /work/shared/data/SOURCES.md. Its threshold t accepts squared L2 <= 4(1 - t), i.e. cosine >= 2t - 1.
GPTCACHE_PUBLISHED = [
    {"threshold": 0.95, "cosine": 0.90, "correct": 425, "wrong": 25, "misses": 549},
    {"threshold": 0.9, "cosine": 0.80, "correct": 804, "wrong": 77, "misses": 118},
    {"threshold": 0.8, "cosine": 0.60, "correct": 904, "wrong": 92, "misses": 3},
]
TARGET_WRONG_SHARE = 0.02
TARGET_PARAPHRASE_RATE = 0.70
TARGET_HARD_DUPLICATES = 0.30
SPLITS = ("tune", "report")


def split_of(anchor: str) -> str:
    """TUNE or REPORT, fixed by the cached question a query is written against."""
    return SPLITS[hashlib.sha256(anchor.strip().lower().encode()).digest()[0] % 2]


class MemoEmbedding:
    """The embedding model with a memory, for the untimed sweeps (the timed pass uses the bare model)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.seen: dict[str, list[float]] = {}

    def get_query_embedding(self, text: str) -> list[float]:
        if text not in self.seen:
            self.seen[text] = self.model.get_query_embedding(text)
        return self.seen[text]


@dataclass(frozen=True)
class Query:
    text: str
    group: str  # pairs | own_paraphrase | near_miss:<kind> | pair_near_miss:<kind> | unrelated | hard_dup | hard_neg:..
    expected: str | None  # the cached question a correct hit returns; None: any hit is wrong
    split: str


@dataclass(frozen=True)
class Outcome:
    similarity: float | None
    matched: str | None
    latency_s: float


def load_queries(pairs_path: Path, eval_dir: Path, limit: int = 0) -> tuple[list[str], list[Query]]:
    pairs = json.loads(pairs_path.read_text(encoding="utf-8"))[: limit or None]
    near = json.loads((eval_dir / "near_misses.json").read_text(encoding="utf-8"))["groups"]
    pair_near = json.loads((eval_dir / "pair_near_misses.json").read_text(encoding="utf-8"))["near_misses"]
    unrelated = json.loads((eval_dir / "unrelated.json").read_text(encoding="utf-8"))["questions"]
    hard = json.loads((eval_dir / "hard_pairs.json").read_text(encoding="utf-8"))["pairs"]
    cached = list(
        dict.fromkeys([p["origin"].strip() for p in pairs] + [g["cached"] for g in near] + [h["a"] for h in hard])
    )
    queries = [Query(p["similar"].strip(), "pairs", p["origin"].strip(), split_of(p["origin"])) for p in pairs]
    for g in near:
        sp = split_of(g["cached"])
        queries += [Query(q, "own_paraphrase", g["cached"], sp) for q in g["paraphrases"]]
        queries += [Query(n["question"], f"near_miss:{n['kind']}", None, sp) for n in g["near_misses"]]
    known = set(cached)
    queries += [
        Query(n["question"], f"pair_near_miss:{n['kind']}", None, split_of(n["origin"]))
        for n in pair_near
        if n["origin"] in known
    ]
    queries += [Query(q, "unrelated", None, split_of(q)) for q in unrelated]
    for h in hard:
        group = "hard_dup" if h["duplicate"] else f"hard_neg:{h['kind']}"
        queries.append(Query(h["b"], group, h["a"] if h["duplicate"] else None, split_of(h["a"])))
    return cached, queries


def run_lookups(cache: SemanticCache, queries: Sequence[Query], label: str) -> list[Outcome]:
    out = []
    for q in tqdm(queries, desc=label, disable=not sys.stderr.isatty()):
        start = time.perf_counter()
        hit = cache.lookup(q.text, SCOPE).hit
        elapsed = time.perf_counter() - start
        out.append(Outcome(hit.similarity if hit else None, hit.matched_question if hit else None, elapsed))
    return out


def kind_of(group: str) -> str:
    """The column a query counts in."""
    if group in ("pairs", "own_paraphrase", "hard_dup"):
        return group
    return "hard_neg" if group.startswith("hard_neg") else "negative"


def score(queries: Sequence[Query], outcomes: Sequence[Outcome], threshold: float, split: str) -> dict[str, Any]:
    """Counts at one threshold for one split; every rate has its own denominator."""
    c: Counter[str] = Counter()
    n: Counter[str] = Counter()
    for q, o in zip(queries, outcomes, strict=True):
        if q.split != split:
            continue
        kind = kind_of(q.group)
        n[kind] += 1
        hit = o.similarity is not None and o.similarity >= threshold - 1e-9
        if not hit:
            c[f"{kind}_miss"] += 1
        elif q.expected is not None and o.matched == q.expected:
            c[f"{kind}_correct"] += 1
        else:
            c[f"{kind}_wrong"] += 1
            c[f"wrong:{q.group}"] += 1

    def rate(num: int, den: int) -> float:
        return num / den if den else 0.0

    pairs_hits = c["pairs_correct"] + c["pairs_wrong"]
    hard_hits = c["hard_dup_correct"] + c["hard_dup_wrong"] + c["hard_neg_wrong"]
    own_hits = c["own_paraphrase_correct"] + c["own_paraphrase_wrong"] + c["negative_wrong"]
    return {
        "threshold": round(threshold, 4),
        "split": split,
        "asked": dict(n),
        "pairs": {"correct": c["pairs_correct"], "wrong": c["pairs_wrong"], "misses": c["pairs_miss"]},
        "pairs_hit_rate": rate(c["pairs_correct"], n["pairs"]),
        "pairs_wrong_share": rate(c["pairs_wrong"], pairs_hits),
        "own_paraphrase_hit_rate": rate(c["own_paraphrase_correct"], n["own_paraphrase"]),
        "negatives_answered": c["negative_wrong"],
        "negatives_answered_rate": rate(c["negative_wrong"], n["negative"]),
        "own_wrong_share": rate(c["own_paraphrase_wrong"] + c["negative_wrong"], own_hits),
        "hard_duplicates_answered": rate(c["hard_dup_correct"], n["hard_dup"]),
        "hard_hits": hard_hits,
        "hard_wrong_hits": c["hard_dup_wrong"] + c["hard_neg_wrong"],
        "hard_wrong_share": rate(c["hard_dup_wrong"] + c["hard_neg_wrong"], hard_hits),
        "wrong_by_group": {k.removeprefix("wrong:"): v for k, v in sorted(c.items()) if k.startswith("wrong:")},
    }


def latency_ms(outcomes: Iterable[Outcome]) -> dict[str, float]:
    xs = [o.latency_s * 1000 for o in outcomes]
    return {"n": len(xs), "p50_ms": statistics.median(xs), "p99_ms": percentile(xs, 99)} if xs else {"n": 0}


def safe(row: dict[str, Any]) -> bool:
    """Within the wrong-hit targets: hard pairs, GPTCache's pairs, and our paraphrases + negatives."""
    return all(row[k] <= TARGET_WRONG_SHARE for k in ("hard_wrong_share", "pairs_wrong_share", "own_wrong_share"))


def recommend(rows: Sequence[dict[str, Any]], steady: int = 2) -> dict[str, Any] | None:
    """On TUNE rows: the threshold answering the most hard duplicates within the wrong-hit targets,
    whose neighbours `steady` steps below are within them too (a lone point under the line is noise)."""
    ok = [row for i, row in enumerate(rows) if i >= steady and all(safe(r) for r in rows[i - steady : i + 1])]
    return max(ok, key=lambda r: (r["hard_duplicates_answered"], r["pairs_hit_rate"], -r["threshold"])) if ok else None


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    styles = {"shipped_checks": "-", "four_guards": "-.", "cosine_only": ":"}
    for key, style in styles.items():
        rows = result["curves"]["report"][key]
        ts = [r["threshold"] for r in rows]
        left.plot(
            ts, [100 * r["hard_duplicates_answered"] for r in rows], "C0" + style, label=f"hard dups answered ({key})"
        )
        left.plot(ts, [100 * r["hard_wrong_share"] for r in rows], "C3" + style, label=f"hard wrong, % of hits ({key})")
        right.plot(
            [100 * r["pairs_wrong_share"] for r in rows], [100 * r["pairs_hit_rate"] for r in rows], style, label=key
        )
    pub = result["gptcache_published"]
    right.plot(
        [100 * p["wrong"] / (p["correct"] + p["wrong"]) for p in pub],
        [100 * p["correct"] / 999 for p in pub],
        "ks",
        label="GPTCache published, all 999 pairs",
    )
    shipped = result["shipped"]["report"]
    left.axvline(shipped["threshold"], color="gray", lw=0.8)
    right.plot([100 * shipped["pairs_wrong_share"]], [100 * shipped["pairs_hit_rate"]], "g*", ms=14, label="shipped")
    left.axhline(100 * TARGET_WRONG_SHARE, color="C3", lw=0.5, ls=":")
    left.axhline(100 * TARGET_HARD_DUPLICATES, color="C0", lw=0.5, ls=":")
    left.set(xlabel="cosine threshold", ylabel="%", title="Hard pairs, REPORT split (threshold chosen on TUNE)")
    right.set(
        xlabel="wrong hits, % of the pairs' hits",
        ylabel="paraphrase hit rate, %",
        title="GPTCache's pairs, REPORT split, vs GPTCache's published run",
    )
    left.legend(fontsize=7, loc="center left")
    right.legend(fontsize=7)
    right.set_xlim(left=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", type=Path, help="pairs file: a JSON list of {origin, similar}")
    parser.add_argument("--eval-dir", type=Path, default=REPO_ROOT / "data" / "cache_eval")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "cache_precision")
    parser.add_argument("--profile", default=None, help="settings profile (embedding model, shipped threshold)")
    parser.add_argument("--min-threshold", type=float, default=0.70)
    parser.add_argument("--step", type=float, default=0.01)
    parser.add_argument("--pairs-limit", type=int, default=0, help="only the first N pairs of the file (0: all)")
    args = parse_args(parser, argv, quick={"pairs_limit": 150, "step": 0.05})
    if not args.pairs.is_file():
        parser.error(f"pairs file not found: {args.pairs}")

    settings = load_settings(args.profile)
    shipped = settings.cache
    cached, queries = load_queries(args.pairs, args.eval_dir, args.pairs_limit)
    model = load_embedding(settings.index.embed_model, settings.index.embed_batch_size)
    steps = round((1 - args.min_threshold) / args.step)
    thresholds = [round(args.min_threshold + i * args.step, 4) for i in range(steps + 1)]
    four: tuple[GuardName, ...] = ("numbers", "negation", "entities", "opposites")
    # What each check buys: the shipped checks, the four older guards (no content-word guard), the bare cosine.
    variants: dict[str, tuple[Collection[GuardName], float]] = {
        "shipped_checks": (shipped.guards, shipped.ambiguity_margin),
        "four_guards": (four, shipped.ambiguity_margin),
        "cosine_only": ((), 0.0),
    }

    with tempfile.TemporaryDirectory(prefix="cache-bench-") as tmp:

        def make(threshold: float, guards: Collection[GuardName], margin: float, embedding: Any) -> SemanticCache:
            return SemanticCache(
                Path(tmp),
                embedding,
                settings.index.embed_model,
                threshold,
                10**9,
                guards=guards,
                top_k=shipped.top_k,
                ambiguity_margin=margin,
                max_entries=10**6,
            )

        memo = MemoEmbedding(model)
        builder = make(args.min_threshold, (), 0.0, memo)
        store_s = []
        for q in tqdm(cached, desc="store", disable=not sys.stderr.isatty()):
            start = time.perf_counter()
            builder.store(q, SCOPE, CachedAnswer(f"answer to: {q}", [], time.time()))
            store_s.append(time.perf_counter() - start)
        builder.close()

        def sweep(
            threshold: float, guards: Collection[GuardName], margin: float, label: str, emb: Any
        ) -> list[Outcome]:
            cache = make(threshold, guards, margin, emb)
            try:
                return run_lookups(cache, queries, label)
            finally:
                cache.close()

        sweeps = {name: sweep(args.min_threshold, g, m, name, memo) for name, (g, m) in variants.items()}
        g, m = variants["shipped_checks"]
        real = sweep(shipped.similarity_threshold, g, m, "shipped settings (timed)", model)
        # The embedding alone on a sample of the same questions, right after: how much of a lookup it is.
        embed_s = []
        for q in queries[::4]:
            start = time.perf_counter()
            model.get_query_embedding(q.text)
            embed_s.append(time.perf_counter() - start)
        load_avg = os.getloadavg()

    curves = {
        sp: {name: [score(queries, outcomes, t, sp) for t in thresholds] for name, outcomes in sweeps.items()}
        for sp in SPLITS
    }
    chosen = recommend(curves["tune"]["shipped_checks"])
    at = chosen["threshold"] if chosen else shipped.similarity_threshold
    result = {
        "pairs_file": str(args.pairs),
        "cached_questions": len(cached),
        "queries": {sp: dict(Counter(kind_of(q.group) for q in queries if q.split == sp)) for sp in SPLITS},
        "negative_kinds": dict(Counter(q.group for q in queries if q.expected is None)),
        "embedding": settings.index.embed_model,
        "top_k": shipped.top_k,
        "shipped": {
            "threshold": shipped.similarity_threshold,
            "guards": list(shipped.guards),
            "ambiguity_margin": shipped.ambiguity_margin,
            "tune": score(queries, sweeps["shipped_checks"], shipped.similarity_threshold, "tune"),
            "report": score(queries, real, 0.0, "report"),
            "derivation_matches": all(
                score(queries, sweeps["shipped_checks"], shipped.similarity_threshold, sp)[k]
                == score(queries, real, 0.0, sp)[k]
                for sp in SPLITS
                for k in ("pairs", "hard_hits", "negatives_answered")
            ),
        },
        "chosen_on_tune": chosen,
        "chosen_on_report": {name: score(queries, outcomes, at, "report") for name, outcomes in sweeps.items()},
        "gptcache_published": GPTCACHE_PUBLISHED,
        "latency": {
            "hit": latency_ms(o for o in real if o.similarity is not None),
            "miss": latency_ms(o for o in real if o.similarity is None),
            "store": latency_ms(Outcome(None, None, s) for s in store_s),
            "embedding_alone": latency_ms(Outcome(None, None, s) for s in embed_s),
        },
        "curves": curves,
        "machine": {"cpus": os.cpu_count(), "load_avg": load_avg, "python": platform.python_version()},
        "targets": {
            "wrong_share_max": TARGET_WRONG_SHARE,
            "pairs_hit_rate_min": TARGET_PARAPHRASE_RATE,
            "hard_duplicates_answered_min": TARGET_HARD_DUPLICATES,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    plot(result, args.out.with_suffix(".png"))
    print_summary(result)
    return 0


def row_text(r: dict[str, Any]) -> str:
    return (
        f"pairs hit {r['pairs_hit_rate']:.1%} (wrong {r['pairs_wrong_share']:.1%} of their hits), "
        f"own paraphrases hit {r['own_paraphrase_hit_rate']:.1%}, negatives answered {r['negatives_answered']}"
        f"/{r['asked'].get('negative', 0)}, hard dups answered {r['hard_duplicates_answered']:.1%}, "
        f"hard wrong {r['hard_wrong_hits']}/{r['hard_hits']} = {r['hard_wrong_share']:.1%}"
    )


def print_summary(r: dict[str, Any]) -> None:
    print(f"cached {r['cached_questions']} questions; asked {r['queries']}")
    s = r["shipped"]
    print(f"shipped {s['threshold']} + {'/'.join(s['guards'])} + margin {s['ambiguity_margin']}:")
    print(f"  TUNE   {row_text(s['tune'])}")
    print(f"  REPORT {row_text(s['report'])}  (timed pass; derivation matches: {s['derivation_matches']})")
    chosen = r["chosen_on_tune"]
    print(f"chosen on TUNE: {chosen['threshold'] if chosen else 'none meets the targets'}; REPORT at it:")
    for name, row in r["chosen_on_report"].items():
        print(f"  {name:15s} {row_text(row)}")
    lat = r["latency"]
    print(
        f"lookup latency: hit p50 {lat['hit']['p50_ms']:.1f} ms p99 {lat['hit']['p99_ms']:.1f} ms; "
        f"miss p50 {lat['miss']['p50_ms']:.1f} ms p99 {lat['miss']['p99_ms']:.1f} ms; "
        f"store p50 {lat['store']['p50_ms']:.1f} ms; embedding alone p50 {lat['embedding_alone']['p50_ms']:.1f} ms "
        f"(load avg {r['machine']['load_avg'][0]:.2f} on {r['machine']['cpus']} cores)"
    )


if __name__ == "__main__":
    raise SystemExit(main())
