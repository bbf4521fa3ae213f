"""What shared index records cost: retrieval, and a new host's first query, embedded vs shared.

`data/docs` is ingested in both modes; then, in interleaved rounds so both see the same load:
- hybrid retrieval (top 5) with the query embedding given, so only the stores are timed, and
  within it the manifest check each retrieval makes: a `stat` (embedded), a PostgreSQL query (shared);
- opening the index on a host whose folder is empty (shared: BM25 rebuilt from the docstore's
  rows) against opening it where the BM25 cache is warm;
- the BM25 rebuild alone at a larger size: N synthetic chunk-token rows in a shared docstore,
  read and indexed, against loading the saved index.

Needs the servers running: `make postgres-start` and `make chroma-server`.

    python -m bench.shared_index --postgres-url postgresql://rag@127.0.0.1:55432/rag --chroma-port 8001
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from bench.common import machine, write_results
from config.settings import REPO_ROOT, IndexSettings, sqlalchemy_url
from indexing.bm25 import Bm25Index
from indexing.docstore import ChunkRow, DocRecord, DocStore
from indexing.embeddings import OFFLINE_MINILM, load_embedding
from indexing.pipeline import ingest
from indexing.records import IndexRecords
from indexing.retrieval import open_retriever

QUESTIONS = [
    "how do I install it",
    "what does the ingest lock do",
    "which settings change the cache",
    "how are answers cited",
    "what happens when the engine dies",
    "how do I run the tests",
    "what is hybrid retrieval",
    "how do I upload a document",
]
MODES = ("embedded", "shared")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres-url", required=True)
    parser.add_argument("--chroma-port", type=int, default=8001)
    parser.add_argument("--rounds", type=int, default=200, help="retrievals per mode")
    parser.add_argument("--opens", type=int, default=10, help="index opens per kind")
    parser.add_argument("--synthetic-chunks", type=int, default=50_000)
    parser.add_argument("--docs", type=Path, default=REPO_ROOT / "data" / "docs")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    args = parser.parse_args()
    model = load_embedding(OFFLINE_MINILM, 64)
    vectors = [model.get_query_embedding(q) for q in QUESTIONS]
    timings: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp, scratch_database(args.postgres_url) as database:
        root = Path(tmp)
        embedded = IndexSettings(docs_dir=args.docs, index_dir=root / "embedded")
        shared = embedded.model_copy(
            update={
                "index_dir": root / "host-a",
                "chroma_mode": "http",
                "chroma_port": args.chroma_port,
                "collection": f"bench-{uuid.uuid4().hex[:8]}",
                "state_url": SecretStr(database),
            }
        )
        chunks = ingest(embedded, progress=False, embed_model=model).chunks
        assert ingest(shared, progress=False, embed_model=model).chunks == chunks
        load_before = os.getloadavg()
        retrievers = {
            "embedded": open_retriever(embedded, embed_model=model),
            "shared": open_retriever(shared, embed_model=model),
        }
        records = {"embedded": IndexRecords(embedded, readonly=True), "shared": IndexRecords(shared, readonly=True)}
        try:
            for i in range(args.rounds):
                question, vector = QUESTIONS[i % len(QUESTIONS)], vectors[i % len(QUESTIONS)]
                for mode in MODES if i % 2 else reversed(MODES):
                    call = partial(retrievers[mode].retrieve, question, query_embedding=vector)
                    timed(timings, f"retrieve ({mode})", call)
                    timed(timings, f"manifest check ({mode})", records[mode].manifest_stamp)
        finally:
            for retriever in retrievers.values():
                retriever.close()
            for record in records.values():
                record.close()
        for i in range(args.opens):
            cold = shared.model_copy(update={"index_dir": root / f"host-{i}"})
            for name, settings in (("open, warm cache", shared), ("open, empty folder", cold)):
                timed(timings, name, partial(first_query, settings, model, vectors[0]))
        rebuild, load = synthetic_rebuild(database, root / "synthetic", args.synthetic_chunks)
        timings["bm25 rebuild from rows (synthetic)"], timings["bm25 load from cache (synthetic)"] = rebuild, load
        load_after = os.getloadavg()
    medians = {name: statistics.median(values) * 1000 for name, values in timings.items()}
    result = {
        "what": __doc__.splitlines()[0],
        "machine": machine(),
        "corpus_chunks": chunks,
        "rounds": args.rounds,
        "opens": args.opens,
        "synthetic_chunks": args.synthetic_chunks,
        "load_avg_before_after": [load_before[0], load_after[0]],
        "median_ms": medians,
        "shared_over_embedded": {
            part: medians[f"{part} (shared)"] / medians[f"{part} (embedded)"] for part in ("retrieve", "manifest check")
        },
    }
    rows = [f"{'step':40} {'median ms':>10}"] + [f"{n:40} {medians[n]:10.1f}" for n in sorted(medians)]
    rows.append(f"{chunks} chunks; synthetic {args.synthetic_chunks}; load {load_before[0]:.1f} -> {load_after[0]:.1f}")
    write_results(result, args.out, "shared_index", plot, "\n".join(rows))


def timed(timings: dict[str, list[float]], name: str, call: Callable[[], Any]) -> None:
    started = time.perf_counter()
    call()
    timings.setdefault(name, []).append(time.perf_counter() - started)


def first_query(settings: IndexSettings, model: Any, vector: list[float]) -> None:
    with open_retriever(settings, embed_model=model) as retriever:
        retriever.retrieve(QUESTIONS[0], query_embedding=vector)


@contextmanager
def scratch_database(url: str) -> Iterator[str]:
    """A database of its own on the server, dropped afterwards."""
    import psycopg

    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def synthetic_rebuild(database: str, folder: Path, size: int, repeats: int = 3) -> tuple[list[float], list[float]]:
    """Seconds to read `size` chunk-token rows from PostgreSQL and index them, and to load the saved index."""
    rng = random.Random(0)
    vocabulary = [f"term{i}" for i in range(20_000)]
    store = DocStore(sqlalchemy_url(database), prefix="bench_synthetic_")
    try:
        per_doc = 50
        for start in range(0, size, per_doc * 100):
            entries = []
            for d in range(start, min(size, start + per_doc * 100), per_doc):
                record = DocRecord(f"doc{d}", f"doc{d}.md", "h", 1, 1, "f", "markdown", None, per_doc, "now")
                rows = [ChunkRow(f"c{d + j:08d}", j, " ".join(rng.choices(vocabulary, k=60))) for j in range(per_doc)]
                entries.append((record, rows))
            store.commit(entries)
        rebuild, load = [], []
        for _ in range(repeats):
            started = time.perf_counter()
            index = Bm25Index.build(store.chunk_tokens())
            rebuild.append(time.perf_counter() - started)
            index.save(folder)
            started = time.perf_counter()
            Bm25Index.load(folder)
            load.append(time.perf_counter() - started)
    finally:
        store.close()
    return rebuild, load


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(result["median_ms"])
    fig, ax = plt.subplots(figsize=(8, 3.8))
    ax.barh(names, [result["median_ms"][n] for n in names])
    ax.set_xscale("log")
    ax.set_xlabel("median ms (log)")
    ax.set_title(f"Shared vs embedded index records ({result['corpus_chunks']} chunks)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
