"""Retrieval quality on SQuAD v1.1 dev: hit@1/5/10, MRR@10 and nDCG@10 for dense, BM25 and hybrid.

Hybrid is measured with the configured fusion (`index.fusion`) and with the other one, side by side.

The 2,067 paragraphs are the corpus (one Markdown file per paragraph, titled with its article),
ingested through the real pipeline with the shipped settings; each question's gold passage is
the paragraph it was written on. Chunk rankings are collapsed to paragraph rankings (first
chunk of a paragraph counts). Questions are embedded in one batch and the same vector is
passed to dense and hybrid retrieval, so the modes differ only in ranking.

    python -m bench.retrieval_eval --squad ../shared/data/squad-dev-v1.1.json [--questions N] [--backend onnx]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from bench.common import parse_args
from bench.metrics import first_rank, ranking_metrics
from bench.squad import SquadQuestion, read_squad, write_corpus
from config import load_settings
from indexing.embeddings import BACKENDS
from indexing.retrieval import HybridRetriever, Mode

Fusion = Literal["convex", "rrf"]

METRICS = ("hit@1", "hit@5", "hit@10", "mrr@10", "ndcg@10")
DEPTH = 10
CHUNKS_PER_QUERY = 30
"""Chunks fetched per query so that DEPTH distinct paragraphs remain after collapsing."""
RESULTS = Path(__file__).parent / "results"


def load_squad(path: Path, corpus: Path, articles: int = 0) -> list[SquadQuestion]:
    """Write one `# Title` Markdown file per paragraph under `corpus` (of the first `articles`, 0: all);
    return the questions."""
    chosen = read_squad(path)[: articles or None]
    write_corpus(chosen, corpus)
    return [q for article in chosen for q in article.questions]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--squad", type=Path, required=True, help="path to squad-dev-v1.1.json")
    parser.add_argument("--questions", type=int, default=0, help="subsample this many questions (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", default=None)
    parser.add_argument("--backend", choices=BACKENDS, default=None, help="embedding backend (default: the settings')")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep corpus and index here (re-runs are incremental)"
    )
    parser.add_argument("--articles", type=int, default=0, help="only the first N SQuAD articles (0: all 48)")
    args = parse_args(parser, argv, quick={"articles": 3, "questions": 300})
    if not args.squad.is_file():
        parser.error(f"{args.squad} not found (the SQuAD v1.1 dev set; see ../shared/data/SOURCES.md)")

    from indexing.embeddings import load_embedding
    from indexing.pipeline import ingest
    from indexing.retrieval import open_retriever

    base = load_settings(args.profile).index
    if args.backend:
        base = base.model_copy(update={"embed_backend": args.backend})
    with tempfile.TemporaryDirectory(prefix="squad-eval-") as scratch:
        tmp = args.workdir or Path(scratch)
        corpus = Path(tmp) / "corpus"
        questions = load_squad(args.squad, corpus, args.articles)
        total_questions = len(questions)
        if args.questions and args.questions < len(questions):
            questions = random.Random(args.seed).sample(questions, args.questions)
        settings = base.model_copy(update={"docs_dir": corpus, "index_dir": Path(tmp) / "index"})
        model = load_embedding(settings.embed_model, settings.embed_batch_size, settings.embed_backend)
        print(f"ingesting {len({q.source for q in questions})}+ paragraphs ...", flush=True)
        report = ingest(settings, progress=None, embed_model=model)
        print(report.summary(), flush=True)
        retriever = open_retriever(settings, embed_model=model)
        chunk_size = retriever.manifest.chunk_size  # read while the (temporary) index exists

        started = time.perf_counter()
        vectors = model.get_text_embedding_batch([q.text for q in questions], show_progress=False)
        embed_s = time.perf_counter() - started
        probe = model.get_query_embedding(questions[0].text)
        assert max(abs(a - b) for a, b in zip(probe, vectors[0], strict=True)) < 1e-4, "query != text embedding"

        other: Fusion = "rrf" if settings.fusion == "convex" else "convex"
        alternative = open_retriever(settings.model_copy(update={"fusion": other}), embed_model=model)
        runs: list[tuple[str, HybridRetriever, Mode]] = [
            ("dense", retriever, "dense"),
            ("bm25", retriever, "bm25"),
            ("hybrid", retriever, "hybrid"),
            (f"hybrid_{other}", alternative, "hybrid"),
        ]
        results: dict[str, Any] = {}
        for label, searcher, mode in runs:
            ranks: list[int | None] = []
            latencies: list[float] = []
            for q, vec in zip(questions, vectors, strict=True):
                t0 = time.perf_counter()
                passages = searcher.retrieve(q.text, top_k=CHUNKS_PER_QUERY, mode=mode, query_embedding=vec)
                latencies.append(time.perf_counter() - t0)
                ranks.append(first_rank([p.source for p in passages], q.source, DEPTH))
            results[label] = ranking_metrics(ranks) | {"search_ms_p50": 1000 * statistics.median(latencies)}
            print(label, {k: round(v, 4) for k, v in results[label].items()}, flush=True)

    summary = {
        "dataset": "SQuAD v1.1 dev (CC BY-SA 4.0)",
        "paragraphs": report.documents,
        "chunks": report.chunks,
        "questions_total": total_questions,
        "questions_evaluated": len(questions),
        "seed": args.seed if args.questions else None,
        "effective_chunk_size": chunk_size,
        "settings": {
            k: getattr(settings, k)
            for k in (
                "embed_model",
                "embed_backend",
                "chunk_size",
                "chunk_overlap",
                "candidates_k",
                "fusion",
                "dense_weight",
                "rrf_k",
            )
        },
        "ingest": {
            "seconds": round(report.seconds, 1),
            "chunks_written": report.chunks_written,
            "note": "index reused from --workdir (unchanged corpus)" if report.chunks_written == 0 else "full ingest",
        },
        "question_embedding_per_s": round(len(questions) / embed_s, 1),
        "results": results,
        "hybrid_above_both": {m: results["hybrid"][m] > max(results["dense"][m], results["bm25"][m]) for m in METRICS},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "retrieval.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    plot(results, args.out / "retrieval.png", len(questions))
    print(json.dumps(summary, indent=2))
    return 0


def plot(results: dict[str, dict[str, float]], path: Path, n: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(results)
    for i, (label, values) in enumerate(results.items()):
        xs = [x + (i - (len(results) - 1) / 2) * width for x in range(len(METRICS))]
        bars = ax.bar(xs, [values[m] for m in METRICS], width, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=6)
    ax.set_xticks(range(len(METRICS)), METRICS)
    ax.set_ylim(0, 1)
    ax.set_title(f"Retrieval on SQuAD v1.1 dev ({n:,} questions, 2,067 paragraphs)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
