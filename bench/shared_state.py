"""What shared state costs: embedded (sqlite + faiss, SQLite files) vs shared (PostgreSQL + Chroma server).

Times, in interleaved rounds so both modes see the same machine load:
- a semantic-cache hit (lookup of a paraphrase of a cached question; memo cold, so each lookup
  embeds), and the bare embedding of the same paraphrase, to show the storage part alone;
- a cache store;
- recording a turn and reading the conversation back (the turn store).

Needs the servers running: `make postgres-start` and `make chroma-server`.

    python -m bench.shared_state --postgres-url postgresql://rag@127.0.0.1:55432/rag --chroma-port 8001
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from app.store import ChatStore, ChatTurn
from bench.common import machine, write_results
from chains.cache import CachedAnswer, CacheScope, SemanticCache, SharedServers
from chains.results import Source, Timings
from config.settings import REPO_ROOT, CacheSettings, sqlalchemy_url
from indexing.embeddings import OFFLINE_MINILM, load_embedding

PAIRS = REPO_ROOT.parent / "shared" / "data" / "cache_pairs.json"
MODES = ("embedded", "shared")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres-url", required=True)
    parser.add_argument("--chroma-port", type=int, default=8001)
    parser.add_argument("--rounds", type=int, default=150)
    parser.add_argument("--pairs", type=Path, default=PAIRS, help="paraphrase pairs (GPTCache's benchmark set)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    args = parser.parse_args()
    pairs = json.loads(args.pairs.read_text(encoding="utf-8"))[: args.rounds]
    model = load_embedding(OFFLINE_MINILM, 64)
    scope = CacheScope(f"bench-{uuid.uuid4().hex[:8]}", "bench", "bench")
    servers = SharedServers(sqlalchemy_url(args.postgres_url), "127.0.0.1", args.chroma_port)
    with tempfile.TemporaryDirectory() as tmp:
        guards = CacheSettings().guards  # the configured default
        caches = {
            "embedded": SemanticCache(Path(tmp) / "cache", model, OFFLINE_MINILM, 0.85, 3600, guards=guards),
            "shared": SemanticCache(
                Path(tmp) / "unused", model, OFFLINE_MINILM, 0.85, 3600, guards=guards, shared=servers
            ),
        }
        stores = {"embedded": ChatStore(f"sqlite:///{tmp}/app.sqlite"), "shared": ChatStore(servers.sql_url)}
        timings: dict[str, list[float]] = {}
        hits = dict.fromkeys(MODES, 0)
        load_before = os.getloadavg()
        for i, pair in enumerate(pairs):
            for mode in MODES if i % 2 else reversed(MODES):
                cache, store = caches[mode], stores[mode]
                timed(timings, f"cache store ({mode})", partial(cache.store, pair["origin"], scope, answer()))
                found = timed(timings, f"cache hit ({mode})", partial(cache.lookup, pair["similar"], scope))
                hits[mode] += found.hit is not None
                conversation = f"bench-{uuid.uuid4().hex}"
                timed(timings, f"turn record+read ({mode})", partial(record_and_read, store, conversation))
            timed(timings, "bare embedding", partial(model.get_query_embedding, pair["similar"]))
        load_after = os.getloadavg()
        for cache in caches.values():
            cache.clear()
            cache.close()
        for store in stores.values():
            store.close()
    medians = {name: statistics.median(values) * 1000 for name, values in timings.items()}
    p95 = {name: statistics.quantiles(values, n=20)[-1] * 1000 for name, values in timings.items()}
    result = {
        "what": __doc__.splitlines()[0],
        "machine": machine(),
        "rounds": len(pairs),
        "load_avg_before_after": [load_before[0], load_after[0]],
        "median_ms": medians,
        "p95_ms": p95,
        "hit_rate": {mode: hits[mode] / len(pairs) for mode in MODES},
        "shared_over_embedded": {
            part: medians[f"{part} (shared)"] / medians[f"{part} (embedded)"]
            for part in ("cache hit", "cache store", "turn record+read")
        },
    }
    rows = [f"{'step':32} {'median ms':>10} {'p95 ms':>10}"]
    rows += [f"{name:32} {medians[name]:10.1f} {p95[name]:10.1f}" for name in sorted(medians)]
    rows.append(f"hit rate: {result['hit_rate']}; load {load_before[0]:.1f} -> {load_after[0]:.1f}")
    write_results(result, args.out, "shared_state", plot, "\n".join(rows))


def timed(timings: dict[str, list[float]], name: str, call: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    value = call()
    timings.setdefault(name, []).append(time.perf_counter() - started)
    return value


def answer() -> CachedAnswer:
    return CachedAnswer("A cached answer [1].", [{"file": "guide.md", "snippet": "passage"}], time.time())


def record_and_read(store: ChatStore, conversation: str) -> None:
    source = Source(1, "guide.md", None, None, None, 0, 0.5, "passage", "n1")
    turn = ChatTurn("t1", "question?", "answer.", (source,), False, False, False, Timings(), (), time.time())
    store.record_turn(conversation, turn)
    store.turns(conversation)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = ("cache hit", "cache store", "turn record+read")
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.38
    for offset, mode in ((-width / 2, "embedded"), (width / 2, "shared")):
        values = [result["median_ms"][f"{part} ({mode})"] for part in parts]
        ax.bar([i + offset for i in range(len(parts))], values, width, label=mode)
    ax.axhline(result["median_ms"]["bare embedding"], color="grey", linestyle="--", label="bare embedding")
    ax.set_xticks(range(len(parts)), parts)
    ax.set_ylabel("median ms")
    ax.set_title(f"Shared vs embedded state ({result['rounds']} interleaved rounds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
