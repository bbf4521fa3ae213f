"""Ingestion throughput against raw embedding, re-ingest cost, and retrieval latency at 10k/100k chunks.

1. A mixed-format corpus (md, txt, html, pdf, docx, json; 1,000+ files) is generated from the
   sentences of the sample documents into a temporary folder.
2. Full ingest through the real pipeline (chunks/s, peak memory). Then the throughput ratio on
   two quarters of the corpus, each measured in the order pipeline, raw, raw, pipeline: raw is the
   same model embedding exactly the texts the pipeline embedded (recorded on the way). Neighbours
   in time are compared, since load from other processes on a shared machine drifts.
3. Re-ingest of the unchanged corpus, in process and as `python -m indexing ingest`.
4. Latency: indexes of 10k and 100k chunks built by inserting the real chunks' embeddings, with
   small random perturbations, straight into Chroma and BM25 (latency is measured there, not
   quality); then p50/p99 of `retrieve()` per mode, query embedding included.

    python -m bench.ingest [--files 1000] [--sizes 10000 100000] [--queries 200]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import parse_args
from bench.corpus import seed_sentences, write_corpus
from config import load_settings
from config.settings import IndexSettings
from indexing.retrieval import Mode

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parent.parent
MODES: tuple[Mode, ...] = ("dense", "bm25", "hybrid")


def rss_mb() -> float:
    """Current resident set size."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


@contextmanager
def recording_embedded_texts(model: Any) -> Iterator[list[str]]:
    """Record every text `model` (either backend) embeds meanwhile (a list append per batch: negligible cost)."""
    cls = type(model)
    real = cls._get_text_embeddings
    texts: list[str] = []

    def recording(self: Any, batch: list[str]) -> list[list[float]]:
        texts.extend(batch)
        return real(self, batch)

    cls._get_text_embeddings = recording
    try:
        yield texts
    finally:
        cls._get_text_embeddings = real


def measure_ingest(settings: IndexSettings, model: Any, paths: list[Path] | None = None) -> dict[str, Any]:
    from indexing.pipeline import ingest

    started = time.perf_counter()
    report = ingest(settings, paths, progress=False, embed_model=model)
    seconds = time.perf_counter() - started
    assert report.ok, report.summary()
    return {
        "seconds": round(seconds, 2),
        "files": report.documents,
        "chunks": report.chunks_written,
        "chunks_per_s": round(report.chunks_written / seconds, 2),
        "inside_pipeline_runs_s": round(report.embed_seconds, 2),
        "version": report.version,
    }


def paired_rounds(settings: IndexSettings, model: Any, folders: list[Path]) -> dict[str, Any]:
    """Pipeline (P) against raw embedding (R) of exactly the texts the pipeline embedded, in the order
    P R R P on each of two quarters of the corpus (each P into a fresh index). Load from other
    processes drifts over minutes and the second of two runs is often a little faster; the
    symmetric order cancels both to first order."""
    rounds: list[dict[str, Any]] = []
    for quarter in range(2):
        paths = folders[quarter::4]
        with recording_embedded_texts(model) as texts:
            first = measure_ingest(
                settings.model_copy(update={"index_dir": settings.index_dir / f"q{quarter}a"}), model, paths
            )
        assert len(texts) == first["chunks"], (len(texts), first["chunks"])
        raw = [time_raw(model, texts), time_raw(model, texts)]
        second = measure_ingest(
            settings.model_copy(update={"index_dir": settings.index_dir / f"q{quarter}b"}), model, paths
        )
        rounds.append(
            {
                "chunks": len(texts),
                "pipeline_s": [first["seconds"], second["seconds"]],
                "raw_s": [round(r, 2) for r in raw],
            }
        )
        print(f"  quarter {quarter + 1}: {rounds[-1]}", flush=True)
    pipeline_total = sum(sum(r["pipeline_s"]) for r in rounds)
    raw_total = sum(sum(r["raw_s"]) for r in rounds)
    chunks = 2 * sum(r["chunks"] for r in rounds)
    return {
        "paired_rounds": rounds,
        "pipeline_chunks_per_s": round(chunks / pipeline_total, 2),
        "raw_chunks_per_s": round(chunks / raw_total, 2),
        "pipeline_vs_raw": round(raw_total / pipeline_total, 3),
        "pipeline_vs_raw_per_quarter": [round(sum(r["raw_s"]) / sum(r["pipeline_s"]), 3) for r in rounds],
    }


def time_raw(model: Any, texts: list[str]) -> float:
    started = time.perf_counter()
    model.get_text_embedding_batch(texts)
    return time.perf_counter() - started


def build_synthetic_index(source: IndexSettings, target: IndexSettings, size: int, seed: int) -> float:
    """`size` chunks copied from the real index with perturbed vectors, written straight to Chroma + BM25."""
    import dataclasses

    from indexing.bm25 import Bm25Index, tokenize
    from indexing.layout import IndexLayout
    from indexing.manifest import content_version, now_iso, read_manifest, write_manifest
    from indexing.store import close_client, create_collection, existing_collection, open_client

    started = time.perf_counter()
    src_layout = IndexLayout(source.index_dir)
    client = open_client(source, src_layout)
    got = existing_collection(client, source.collection, str(src_layout.root)).get(
        include=["documents", "metadatas", "embeddings"]
    )
    close_client(client)
    texts, metas = got["documents"] or [], got["metadatas"] or []
    vectors = np.asarray(got["embeddings"], dtype=np.float32)
    tokens = [" ".join(t) for t in tokenize(list(texts))]
    rng = np.random.default_rng(seed)
    layout = IndexLayout(target.index_dir)
    layout.root.mkdir(parents=True)
    client = open_client(target, layout)
    collection = create_collection(client, target.collection, target.embed_model, vectors.shape[1])
    ids = [f"synthetic-{j:07d}" for j in range(size)]
    batch = 5000
    for start in range(0, size, batch):
        rows = range(start, min(start + batch, size))
        base = [j % len(texts) for j in rows]
        noisy = vectors[base] + rng.normal(0, 0.02, (len(base), vectors.shape[1])).astype(np.float32)
        noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
        collection.add(
            ids=[ids[j] for j in rows],
            embeddings=noisy,
            documents=[texts[b] for b in base],
            metadatas=[
                {**dict(metas[b] or {}), "source": f"synthetic/{j // 10:05d}.md"}
                for j, b in zip(rows, base, strict=True)
            ],
        )
    close_client(client)
    version = content_version(sorted(ids), target.embed_model)
    Bm25Index.build((ids[j], tokens[j % len(texts)]) for j in range(size)).save(layout.bm25 / version)
    manifest = read_manifest(src_layout.manifest)
    write_manifest(
        layout.manifest,
        dataclasses.replace(
            manifest, version=version, documents=size // 10, chunks=size, bm25_dir=version, updated_at=now_iso()
        ),
    )
    return time.perf_counter() - started


def measure_latency(settings: IndexSettings, model: Any, queries: list[str]) -> dict[str, dict[str, float]]:
    from indexing.retrieval import open_retriever

    retriever = open_retriever(settings, embed_model=model)
    for q in queries[:10]:  # warm-up: loads the vector index and BM25 arrays
        for mode in MODES:
            retriever.retrieve(q, mode=mode)
    out: dict[str, dict[str, float]] = {}
    for mode in MODES:
        times = []
        for q in queries:
            t0 = time.perf_counter()
            retriever.retrieve(q, mode=mode)
            times.append(1000 * (time.perf_counter() - t0))
        times.sort()
        out[mode] = {
            "p50_ms": round(statistics.median(times), 2),
            "p99_ms": round(times[min(len(times) - 1, int(0.99 * len(times)))], 2),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parse_args(parser, argv, quick={"files": 60, "sizes": [2000], "queries": 30})

    from indexing.embeddings import load_embedding

    base = load_settings(args.profile).index
    sentences = seed_sentences(REPO / "data" / "docs")
    results: dict[str, Any] = {"cpu_count": os.cpu_count(), "embed_model": base.embed_model}
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp_name:
        tmp = Path(tmp_name)
        corpus = tmp / "corpus"
        results["corpus"] = {"files": args.files, "by_type": write_corpus(corpus, args.files, sentences, args.seed)}
        results["corpus"]["megabytes"] = round(sum(p.stat().st_size for p in corpus.rglob("*") if p.is_file()) / 1e6, 2)
        settings = base.model_copy(update={"docs_dir": corpus, "index_dir": tmp / "index-a"})
        model = load_embedding(settings.embed_model, settings.embed_batch_size)
        model.get_text_embedding_batch(sentences[:64])  # warm-up outside every timing
        results["rss_before_ingest_mb"] = round(rss_mb(), 1)

        print("full ingest ...", flush=True)
        full = measure_ingest(settings, model)
        results["peak_rss_after_ingest_mb"] = round(peak_rss_mb(), 1)
        results["ingest"] = {"full_run": full} | paired_rounds(
            settings.model_copy(update={"index_dir": tmp / "paired"}), model, sorted(corpus.iterdir())
        )

        print("re-ingest of the unchanged corpus ...", flush=True)
        again = measure_ingest(settings, model)
        cli_started = time.perf_counter()
        env = {**os.environ, "RAG_INDEX__DOCS_DIR": str(corpus), "RAG_INDEX__INDEX_DIR": str(settings.index_dir)}
        subprocess.run(
            [sys.executable, "-m", "indexing", "ingest", "--quiet"], cwd=REPO, env=env, check=True, capture_output=True
        )
        cli_seconds = time.perf_counter() - cli_started
        results["reingest_unchanged"] = {
            "in_process_s": again["seconds"],
            "share_of_full": round(again["seconds"] / full["seconds"], 4),
            "cli_wall_s": round(cli_seconds, 2),
            "cli_share_of_full": round(cli_seconds / full["seconds"], 4),
        }

        rng = random.Random(args.seed)
        queries = [rng.choice(sentences) for _ in range(args.queries)]
        results["latency"] = {}
        for size in args.sizes:
            print(f"latency at {size} chunks ...", flush=True)
            target = settings.model_copy(update={"index_dir": tmp / f"latency-{size}"})
            build_s = build_synthetic_index(settings, target, size, args.seed)
            results["latency"][str(size)] = {"build_s": round(build_s, 1)} | measure_latency(target, model, queries)
        results["latency_note"] = (
            "indexes built from the real chunks' embeddings with Gaussian perturbation (sigma 0.02, renormalised), "
            "inserted directly into Chroma and BM25; p50/p99 of retrieve() including the query embedding"
        )

    results["targets"] = {
        "pipeline_vs_raw >= 0.85": results["ingest"]["pipeline_vs_raw"] >= 0.85,
        "reingest <= 0.05 of full": results["reingest_unchanged"]["share_of_full"] <= 0.05,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ingest.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    plot(results, args.out / "ingest.png")
    print(json.dumps(results, indent=2))
    return 0


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    ingest = results["ingest"]
    labels = ["raw embedding", "pipeline (paired)", "pipeline (full run)"]
    values = [ingest["raw_chunks_per_s"], ingest["pipeline_chunks_per_s"], ingest["full_run"]["chunks_per_s"]]
    bars = left.bar(labels, values, color=["#888", "#1f77b4", "#aec7e8"])
    left.bar_label(bars, fmt="%.1f")
    left.set_ylabel("chunks / s")
    left.set_title(
        f"Ingest {ingest['full_run']['chunks']:,} chunks from {results['corpus']['files']:,} files: "
        f"{100 * ingest['pipeline_vs_raw']:.0f}% of raw",
        fontsize=10,
    )
    sizes = list(results["latency"])
    width = 0.13
    for i, mode in enumerate(MODES):
        for j, stat in enumerate(("p50_ms", "p99_ms")):
            xs = [k + (2 * i + j - 2.5) * width for k in range(len(sizes))]
            vals = [results["latency"][s][mode][stat] for s in sizes]
            b = right.bar(xs, vals, width, label=f"{mode} {stat[:3]}", alpha=1.0 if j == 0 else 0.55)
            right.bar_label(b, fmt="%.0f", fontsize=7)
    right.set_xticks(range(len(sizes)), [f"{int(s):,} chunks" for s in sizes])
    right.set_yscale("log")  # p99 on a shared machine is tens of times p50
    right.set_ylabel("ms per query, embedding included (log)")
    right.set_title("Retrieval latency")
    right.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
