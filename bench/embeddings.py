"""Query-embedding backends side by side: torch (sentence-transformers) vs ONNX Runtime fp32 vs int8.

Measured in one process, interleaved so load drifts hit every backend alike:
- single-query latency: the same question through each backend in turn (order rotated per
  question), p50/p90 over `--queries` questions, as the cache lookup and retrieval embed one;
- batch throughput: 64 chunk-sized passages per call (the ingest batch), rounds rotated;
- agreement with torch: cosine of each backend's vector with torch's over passages and questions.
Texts come from the sample docs (`data/docs`) and the cache-pair questions, not from SQuAD.
With `--squad`, retrieval quality is `bench.retrieval_eval` once per backend (SQuAD v1.1 dev,
every paragraph ingested with that backend), running beside the timings.

    python -m bench.embeddings --pairs ../shared/data/cache_pairs.json [--squad ../shared/data/squad-dev-v1.1.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import parse_args
from bench.corpus import seed_sentences
from bench.metrics import percentile, ranking_metrics
from config import load_settings
from indexing.embeddings import BACKENDS, load_embedding

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
BATCH = 64
PASSAGE_CHARS = 1000
"""About 220 MiniLM tokens: the size of an ingested chunk (capped at 240)."""


def passages(sentences: list[str], count: int, rng: random.Random) -> list[str]:
    """Chunk-sized runs of consecutive sample-doc sentences."""
    out: list[str] = []
    while len(out) < count:
        i = rng.randrange(len(sentences))
        text = ""
        while len(text) < PASSAGE_CHARS:
            text += sentences[i % len(sentences)] + " "
            i += 1
        out.append(text.strip())
    return out


def single_query_latency(models: dict[str, Any], questions: list[str]) -> dict[str, dict[str, float]]:
    times: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    for i, question in enumerate(questions):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            started = time.perf_counter()
            models[name].get_query_embedding(question)
            times[name].append(time.perf_counter() - started)
    return {
        name: {
            "p50_ms": round(1000 * statistics.median(t), 2),
            "p90_ms": round(1000 * percentile(t, 90), 2),
            "n": len(t),
        }
        for name, t in times.items()
    }


def batch_throughput(models: dict[str, Any], texts: list[str], rounds: int) -> dict[str, dict[str, float]]:
    rates: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    for r in range(rounds):
        batch = texts[(r * BATCH) % len(texts) :][:BATCH]
        for name in names[r % len(names) :] + names[: r % len(names)]:
            started = time.perf_counter()
            models[name].get_text_embedding_batch(batch)
            rates[name].append(len(batch) / (time.perf_counter() - started))
    return {
        name: {"sentences_per_s_median": round(statistics.median(v), 1), "rounds": len(v)} for name, v in rates.items()
    }


def agreement(models: dict[str, Any], texts: list[str], questions: list[str]) -> dict[str, dict[str, float]]:
    reference_texts = np.asarray(models["torch"].get_text_embedding_batch(texts))
    reference_queries = np.asarray([models["torch"].get_query_embedding(q) for q in questions])
    out: dict[str, dict[str, float]] = {}
    for name, model in models.items():
        if name == "torch":
            continue
        got_texts = np.asarray(model.get_text_embedding_batch(texts))
        got_queries = np.asarray([model.get_query_embedding(q) for q in questions])
        cosines = np.concatenate(
            [(got_texts * reference_texts).sum(axis=1), (got_queries * reference_queries).sum(axis=1)]
        )
        out[name] = {
            "min_cosine": round(float(cosines.min()), 6),
            "p1_cosine": round(percentile(cosines, 1), 6),
            "median_cosine": round(float(np.median(cosines)), 6),
            "max_abs_diff": round(float(np.abs(got_texts - reference_texts).max()), 7),
            "texts": len(cosines),
        }
    return out


def dense_squad_subset(name: str, squad: Path, paragraphs: int, seed: int) -> dict[str, Any]:
    """Dense retrieval by exact cosine over a seeded sample of SQuAD paragraphs, per backend.

    A quick paired check (same paragraphs, same questions for every backend) for when the full
    `bench.retrieval_eval` per backend (three full ingests) does not fit the time a shared
    machine gives; a paragraph is one text, truncated at the model's window as ingest would not.
    """
    data = json.loads(squad.read_text(encoding="utf-8"))
    items = [(p["context"], [q["question"] for q in p["qas"]]) for a in data["data"] for p in a["paragraphs"]]
    sample = random.Random(seed).sample(items, paragraphs)
    contexts = [context for context, _ in sample]
    asked = [(question, i) for i, (_, questions) in enumerate(sample) for question in questions]
    out: dict[str, Any] = {"paragraphs": paragraphs, "questions": len(asked), "seed": seed}
    for backend in BACKENDS:
        model = load_embedding(name, BATCH, backend)
        corpus = np.asarray(model.get_text_embedding_batch(contexts))
        queries = np.asarray(model.get_text_embedding_batch([question for question, _ in asked]))
        scores = queries @ corpus.T
        gold = scores[np.arange(len(asked)), [i for _, i in asked]]
        ranks = [int(r) if r <= 10 else None for r in 1 + (scores > gold[:, None]).sum(axis=1)]
        out[backend] = {k: round(v, 4) for k, v in ranking_metrics(ranks).items()}
    out["ndcg10_minus_torch"] = {b: round(out[b]["ndcg@10"] - out["torch"]["ndcg@10"], 4) for b in BACKENDS}
    return out


def start_retrieval_evals(squad: Path, questions: int, scratch: Path) -> dict[str, subprocess.Popen[bytes]]:
    """`bench.retrieval_eval` once per backend, each in its own process with a fresh index.

    Started before the timings and run beside them: quality is not timed, the timings interleave
    the backends so this load hits each alike, and three full ingests one after another take
    longer than a shared machine gives a benchmark.
    """
    runs: dict[str, subprocess.Popen[bytes]] = {}
    for backend in BACKENDS:
        command = [sys.executable, "-m", "bench.retrieval_eval", "--squad", str(squad), "--backend", backend]
        command += ["--out", str(scratch / backend)] + (["--questions", str(questions)] if questions else [])
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        runs[backend] = subprocess.Popen(command, stdout=subprocess.DEVNULL, env=env)
    return runs


def retrieval_quality(runs: dict[str, subprocess.Popen[bytes]], scratch: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for backend, run in runs.items():
        if run.wait() != 0:
            raise RuntimeError(f"bench.retrieval_eval --backend {backend} failed (exit {run.returncode})")
        summary = json.loads((scratch / backend / "retrieval.json").read_text(encoding="utf-8"))
        out[backend] = {
            "questions": summary["questions_evaluated"],
            "seed": summary["seed"],
            "chunks": summary["chunks"],
            "ingest_s": summary["ingest"]["seconds"],
            "results": {mode: summary["results"][mode] for mode in ("dense", "hybrid")},
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pairs", type=Path, required=True, help="cache_pairs.json (its questions are timed)")
    parser.add_argument("--squad", type=Path, default=None, help="also run bench.retrieval_eval per backend")
    parser.add_argument("--squad-questions", type=int, default=0, help="subsample SQuAD questions (0: all)")
    parser.add_argument(
        "--dense-paragraphs", type=int, default=0, help="quick paired dense check on N SQuAD paragraphs"
    )
    parser.add_argument("--skip-timings", action="store_true", help="add to the embeddings.json in --out instead")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parse_args(parser, argv, quick={"queries": 40, "rounds": 3, "squad_questions": 200})
    for path in (args.pairs, args.squad):
        if path is not None and not path.is_file():
            parser.error(f"{path} not found")

    settings = load_settings(args.profile).index
    rng = random.Random(args.seed)
    pairs = json.loads(args.pairs.read_text(encoding="utf-8"))
    questions = [p["similar"] for p in rng.sample(pairs, min(args.queries, len(pairs)))]
    texts = passages(seed_sentences(REPO / "data" / "docs"), BATCH * 4, rng)

    with tempfile.TemporaryDirectory(prefix="embed-eval-") as scratch:
        full = args.squad is not None and not args.dense_paragraphs
        runs = start_retrieval_evals(args.squad, args.squad_questions, Path(scratch)) if full else {}
        if args.skip_timings:
            existing = args.out / "embeddings.json"
            results = json.loads(existing.read_text(encoding="utf-8")) if existing.is_file() else {}
        else:
            results = timings(settings.embed_model, texts, questions, args.rounds)
            results["default_backend"] = settings.embed_backend
            write(results, args.out)  # the timings survive a quality run that fails or is stopped
        if args.squad is not None and args.dense_paragraphs:
            print("dense retrieval on a SQuAD sample, per backend ...", flush=True)
            results["dense_squad_subset"] = dense_squad_subset(
                settings.embed_model, args.squad, args.dense_paragraphs, args.seed
            )
            results["loadavg_after_dense_check"] = os.getloadavg()
            write(results, args.out)
        if runs:
            print("waiting for retrieval quality (one bench.retrieval_eval per backend) ...", flush=True)
            results["retrieval_squad"] = retrieval_quality(runs, Path(scratch))
            torch_ndcg = results["retrieval_squad"]["torch"]["results"]
            results["ndcg10_minus_torch"] = {
                name: {
                    mode: round(r["results"][mode]["ndcg@10"] - torch_ndcg[mode]["ndcg@10"], 4) for mode in r["results"]
                }
                for name, r in results["retrieval_squad"].items()
            }
            results["loadavg_after"] = os.getloadavg()
            write(results, args.out)
    print(json.dumps(results, indent=2))
    return 0


def timings(name: str, texts: list[str], questions: list[str], rounds: int) -> dict[str, Any]:
    load_s: dict[str, float] = {}
    models: dict[str, Any] = {}
    for backend in BACKENDS:
        started = time.perf_counter()
        models[backend] = load_embedding(name, BATCH, backend)
        load_s[backend] = round(time.perf_counter() - started, 2)
        models[backend].get_text_embedding_batch(texts[:BATCH])  # warm-up outside every timing
    results: dict[str, Any] = {
        "embed_model": name,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "loadavg_before": os.getloadavg(),
        "load_s_in_process": load_s,
    }
    print("agreement ...", flush=True)
    results["agreement_with_torch"] = agreement(models, texts[: 2 * BATCH], questions[:100])
    print("single-query latency ...", flush=True)
    results["single_query"] = single_query_latency(models, questions)
    print("batch throughput ...", flush=True)
    results["batch_64"] = batch_throughput(models, texts, rounds)
    results["loadavg_after_timings"] = os.getloadavg()
    torch_p50 = results["single_query"]["torch"]["p50_ms"]
    torch_rate = results["batch_64"]["torch"]["sentences_per_s_median"]
    results["speedup_vs_torch"] = {
        backend: {
            "single_query_p50": round(torch_p50 / results["single_query"][backend]["p50_ms"], 2),
            "batch_64": round(results["batch_64"][backend]["sentences_per_s_median"] / torch_rate, 2),
        }
        for backend in BACKENDS
    }
    return results


def write(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "embeddings.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    plot(results, out / "embeddings.png")


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(BACKENDS)
    panels = []
    if "single_query" in results:
        panels.append(("single query p50 (ms, lower is better)", [results["single_query"][n]["p50_ms"] for n in names]))
        panels.append(("batch of 64 (sentences/s)", [results["batch_64"][n]["sentences_per_s_median"] for n in names]))
    if "retrieval_squad" in results:
        panels.append(
            ("SQuAD nDCG@10, hybrid", [results["retrieval_squad"][n]["results"]["hybrid"]["ndcg@10"] for n in names])
        )
    if "dense_squad_subset" in results:
        sample = results["dense_squad_subset"]
        title = f"dense nDCG@10, {sample['paragraphs']} SQuAD paragraphs"
        panels.append((title, [sample[n]["ndcg@10"] for n in names]))
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6), squeeze=False)
    for ax, (title, values) in zip(axes[0], panels, strict=True):
        bars = ax.bar(names, values, color=["#888", "#3a7", "#37a"][: len(names)])
        ax.bar_label(bars, fmt="%.3g", fontsize=8)
        ax.set_title(title, fontsize=9)
    load = results.get("loadavg_before", os.getloadavg())[0]
    fig.suptitle(f"MiniLM embedding by backend ({os.cpu_count()} cores, load {load:.1f} at start)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
