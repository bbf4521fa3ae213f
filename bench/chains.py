"""Chains benchmark: the RAG agent against a plain LangChain chain, side by side in one run.

    python -m bench.chains [--base-url URL] [--squad PATH]

Measures, on a real vLLM server (the tiny CPU model unless --base-url points elsewhere) and a real
index of about 10k chunks built from the SQuAD dev paragraphs (in an ignored work folder, reused):

- full-turn latency answered from the semantic cache for a paraphrase of a cached question (other
  words, so the lookup embeds it; p50/p99) vs the uncached turns that stored the answers;
- orchestration overhead: end-to-end turn latency minus the time inside vLLM, p50, for the agent
  and the baseline. Time inside vLLM = its engine time for the turn's requests (from /metrics)
  plus its HTTP/streaming front end, calibrated by raw HTTP requests of the same answer length and
  the same `stream_interval` interleaved with the turns (both figures are in the JSON); the target
  is 30 ms plus one query embedding, timed on the same questions in the same rounds;
- vLLM prefix-cache hit rate over a 10-turn conversation, and prompt tokens sent per turn over 20
  turns (agent: summary memory; baseline: full history).

The baseline is the straightforward LangChain retrieve-then-generate chain: retrieved context in
the system prompt, the whole history, then the question; no cache, no prefetch, no summary, and
a plain ChatOpenAI that streams every token (no `stream_interval`).
Agent and baseline turns are interleaved so both see the same machine load. Results go to
bench/results/chains.json and chains.png.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import os
import platform
import random
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_openai import ChatOpenAI
from tqdm import tqdm

from bench.common import parse_args, write_results
from bench.metrics import percentile
from chains import IndexRetriever, RagAgent
from chains.llm import make_chat_model
from config import load_settings
from config.settings import REPO_ROOT, Settings
from indexing.embeddings import load_embedding

log = logging.getLogger("bench.chains")

RESULTS = REPO_ROOT / "bench" / "results"
DEFAULT_SQUAD = REPO_ROOT.parent / "shared" / "data" / "squad-dev-v1.1.json"
DEFAULT_WORKDIR = REPO_ROOT / ".run" / "bench-chains"
BASELINE_SYSTEM = "Answer the question using the context below.\n\nContext:\n{context}"


@dataclass
class Sample:
    """One measured turn."""

    total_s: float
    ttft_s: float | None
    vllm_s: float
    """Time vLLM spent on the turn's requests (sum of their server-side end-to-end latencies)."""
    prompt_tokens: float
    prefix_hits: float
    prefix_queries: float
    cached: bool = False
    cache_lookup_s: float = 0.0
    retrieval_s: float = 0.0

    @property
    def overhead_s(self) -> float:
        return self.total_s - self.vllm_s

    @property
    def computed_tokens(self) -> float:
        """Prompt tokens vLLM had to prefill (not served from its prefix cache)."""
        return self.prompt_tokens - self.prefix_hits


class Metrics:
    """Counters from the server's Prometheus endpoint."""

    NAMES = (
        "vllm:e2e_request_latency_seconds_sum",
        "vllm:prefix_cache_hits_total",
        "vllm:prefix_cache_queries_total",
        "vllm:prompt_tokens_total",
    )

    def __init__(self, base_url: str) -> None:
        self._url = base_url.removesuffix("/").removesuffix("/v1") + "/metrics"
        self._client = httpx.Client(timeout=10)

    def read(self) -> dict[str, float]:
        text = self._client.get(self._url).raise_for_status().text
        return {
            name: sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))
            for name in self.NAMES
        }


def measured(metrics: Metrics, before: dict[str, float], total_s: float, ttft_s: float | None) -> Sample:
    """A turn's sample from its latencies and the server counters' change during the turn."""
    after = metrics.read()
    delta = {name: after[name] - before[name] for name in Metrics.NAMES}
    return Sample(
        total_s=total_s,
        ttft_s=ttft_s,
        vllm_s=delta["vllm:e2e_request_latency_seconds_sum"],
        prompt_tokens=delta["vllm:prompt_tokens_total"],
        prefix_hits=delta["vllm:prefix_cache_hits_total"],
        prefix_queries=delta["vllm:prefix_cache_queries_total"],
    )


class PlainChain:
    """The baseline: retrieve, then one generation with the context in the system prompt and the
    full history; no cache, no agent, no summary."""

    def __init__(self, retriever: Any, llm: ChatOpenAI, top_k: int) -> None:
        self._retriever = IndexRetriever(retriever=retriever, k=top_k)
        prompt = ChatPromptTemplate.from_messages(
            [("system", BASELINE_SYSTEM), MessagesPlaceholder("history"), ("human", "{question}")]
        )
        self._chain = prompt | llm
        self._histories: dict[str, list[BaseMessage]] = {}

    async def turn(self, question: str, conversation_id: str) -> tuple[float, float | None, float]:
        """(total seconds, time to first token, retrieval seconds) of one streamed turn."""
        start = time.perf_counter()
        docs = await self._retriever.ainvoke(question)
        retrieval = time.perf_counter() - start
        history = self._histories.setdefault(conversation_id, [])
        context = "\n\n".join(d.page_content for d in docs)
        text: list[str] = []
        ttft = None
        async for chunk in self._chain.astream({"context": context, "history": history, "question": question}):
            if ttft is None and chunk.text:
                ttft = time.perf_counter() - start
            text.append(chunk.text)
        history += [HumanMessage(question), AIMessage("".join(text))]
        return time.perf_counter() - start, ttft, retrieval


async def raw_turn(
    client: httpx.AsyncClient, metrics: Metrics, settings: Settings, question: str, stream_interval: int
) -> Sample:
    """One streamed request straight over HTTP, no LangChain: calibrates what the vLLM server
    spends outside its engine (HTTP, detokenising, streaming) for an answer of the same length,
    sent in chunks of `stream_interval` tokens like the client it calibrates."""
    before = metrics.read()
    start = time.perf_counter()
    ttft = None
    body = {
        "model": settings.llm.model,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": settings.llm.max_tokens,
        "temperature": 0,
        "stream": True,
        **({"stream_interval": stream_interval} if stream_interval > 1 else {}),
    }
    async with client.stream("POST", f"{settings.llm.base_url}/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if ttft is None and line.startswith("data: {"):
                ttft = time.perf_counter() - start
    return measured(metrics, before, time.perf_counter() - start, ttft)


def squad_paragraphs(path: Path) -> list[tuple[str, list[str], list[str]]]:
    """(title, paragraphs, questions) per SQuAD article."""
    if not path.exists():
        raise SystemExit(f"SQuAD file not found: {path} (pass --squad PATH)")
    data = json.loads(path.read_text(encoding="utf-8"))["data"]
    return [
        (
            a["title"].replace("_", " "),
            [p["context"] for p in a["paragraphs"]],
            [q["question"] for p in a["paragraphs"] for q in p["qas"]],
        )
        for a in data
    ]


def build_index(settings: Settings, articles: Sequence[tuple[str, list[str], list[str]]]) -> int:
    """Ingest one Markdown file per SQuAD article (about 10k chunks at 48 tokens); an unchanged
    index is reused, so only the first run pays for the embeddings (several minutes on 2 cores)."""
    from indexing.manifest import read_manifest
    from indexing.pipeline import ingest
    from indexing.retrieval import open_retriever

    docs = settings.index.docs_dir
    manifest = settings.index.index_dir / "manifest.json"
    changed = not manifest.exists() or read_manifest(manifest).documents != len(articles)  # new or interrupted
    for i, (title, paragraphs, _) in enumerate(articles):
        path = docs / f"a{i:03d}.md"
        text = f"# {title}\n\n" + "\n\n".join(paragraphs)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed = True
    if changed:
        with contextlib.redirect_stdout(io.StringIO()):  # LlamaIndex prints a line per short chunk
            ingest(settings.index, [docs], prune=True, progress=None)
    return open_retriever(settings.index).manifest.chunks


def summary(samples: Sequence[Sample]) -> dict[str, Any]:
    ttfts = [s.ttft_s for s in samples if s.ttft_s is not None]
    return {
        "n": len(samples),
        "total_ms_p50": 1000 * percentile([s.total_s for s in samples], 50),
        "total_ms_p99": 1000 * percentile([s.total_s for s in samples], 99),
        "ttft_ms_p50": 1000 * percentile(ttfts, 50),
        "vllm_ms_p50": 1000 * percentile([s.vllm_s for s in samples], 50),
        "overhead_engine_ms_p50": 1000 * percentile([s.overhead_s for s in samples], 50),
        "cache_lookup_ms_p50": 1000 * percentile([s.cache_lookup_s for s in samples], 50),
        "retrieval_ms_p50": 1000 * percentile([s.retrieval_s for s in samples], 50),
        "prompt_tokens_p50": percentile([s.prompt_tokens for s in samples], 50),
    }


def prefix_rate(samples: Sequence[Sample]) -> float:
    queries = sum(s.prefix_queries for s in samples)
    return sum(s.prefix_hits for s in samples) / queries if queries else float("nan")


async def agent_turn(agent: RagAgent, metrics: Metrics, question: str, cid: str | None, use_cache: bool) -> Sample:
    before = metrics.read()
    result = await agent.ainvoke(question, cid, use_cache=use_cache)
    sample = measured(metrics, before, result.timings.total_s, result.timings.ttft_s)
    sample.cached = result.cached
    sample.cache_lookup_s = result.timings.cache_lookup_s
    sample.retrieval_s = result.timings.retrieval_s
    return sample


async def baseline_turn(chain: PlainChain, metrics: Metrics, question: str, cid: str) -> Sample:
    before = metrics.read()
    total, ttft, retrieval = await chain.turn(question, cid)
    sample = measured(metrics, before, total, ttft)
    sample.retrieval_s = retrieval
    return sample


def paraphrase_pairs(path: Path, n: int) -> list[tuple[str, str]]:
    """(cached question, a paraphrase of it) from the cache evaluation set, `n` groups."""
    groups = json.loads(path.read_text(encoding="utf-8"))["groups"]
    return [(g["cached"], g["paraphrases"][0]) for g in groups[:n]]


async def run(
    settings: Settings, retriever: Any, questions: list[str], conversation: list[str], args: Any
) -> dict[str, Any]:
    paraphrases = paraphrase_pairs(args.paraphrases, args.cache_turns)
    base_url = settings.llm.base_url
    assert base_url is not None
    metrics = Metrics(base_url)
    plain_llm = make_chat_model(settings.llm.model_copy(update={"stream_interval": 1}))
    baseline = PlainChain(retriever, plain_llm, settings.index.top_k)
    embedding = load_embedding(settings.index.embed_model, settings.index.embed_batch_size)
    bar = tqdm(total=2 * args.cache_turns + 2 * args.overhead_turns + 2 * args.memory_turns, disable=None, desc="turns")
    with RagAgent.from_settings(settings, retriever=retriever) as agent:
        agent.clear_cache()
        for i, q in enumerate(questions[:3]):  # warm-up: HTTP pools, embedding, first prefills
            await agent_turn(agent, metrics, q, f"warm{i}", use_cache=False)
            await baseline_turn(baseline, metrics, q, f"warm{i}")

        # Ask each cached question, then a paraphrase of it: other words, so nothing is served
        # from a remembered embedding; the timed hit embeds the question like any real one.
        uncached, hits = [], []
        for i, (q, _) in enumerate(paraphrases):
            uncached.append(await agent_turn(agent, metrics, q, f"miss{i}", use_cache=True))
            bar.update()
        for i, (_, p) in enumerate(paraphrases):
            hits.append(await agent_turn(agent, metrics, p, f"hit{i}", use_cache=True))
            bar.update()

        overhead_qs = questions[3 : 3 + args.overhead_turns]
        agent_single, base_single, raw_agent, raw_plain, embed_s = [], [], [], [], []
        async with httpx.AsyncClient(timeout=settings.llm.request_timeout_s) as client:
            for i, q in enumerate(overhead_qs):  # fresh questions: cache lookup misses, answer is stored
                agent_single.append(await agent_turn(agent, metrics, q, f"single{i}", use_cache=True))
                base_single.append(await baseline_turn(baseline, metrics, q, f"single{i}"))
                raw_agent.append(await raw_turn(client, metrics, settings, q, settings.llm.stream_interval))
                raw_plain.append(await raw_turn(client, metrics, settings, q, 1))
                started = time.perf_counter()
                embedding.get_query_embedding(q)
                embed_s.append(time.perf_counter() - started)
                bar.update(2)

        agent_conv, base_conv = [], []
        for q in conversation[: args.memory_turns]:
            agent_conv.append(await agent_turn(agent, metrics, q, "conversation", use_cache=False))
            base_conv.append(await baseline_turn(baseline, metrics, q, "conversation"))
            bar.update(2)
        cache_stats = agent.cache_stats()
    bar.close()
    hit_samples = [s for s in hits if s.cached]
    frontend_s = {
        "agent": percentile([s.overhead_s for s in raw_agent], 50),
        "baseline": percentile([s.overhead_s for s in raw_plain], 50),
    }
    single = {"agent": summary(agent_single), "baseline": summary(base_single)}
    for who, figures in single.items():
        figures["overhead_ms_p50"] = figures["overhead_engine_ms_p50"] - 1000 * frontend_s[who]
    embed_ms = 1000 * percentile(embed_s, 50)
    target_ms = 30 + embed_ms
    uncached_p50 = percentile([s.total_s for s in uncached], 50)
    hit_p50 = percentile([s.total_s for s in hit_samples], 50)
    turns = min(10, len(agent_conv))
    return {
        "cache": {
            "asked": "a paraphrase of each cached question (different text; the embedding runs in every lookup)",
            "turns": len(paraphrases),
            "hits": len(hit_samples),
            "hit_ms_p50": 1000 * hit_p50,
            "hit_ms_p99": 1000 * percentile([s.total_s for s in hit_samples], 99),
            "uncached_ms_p50": 1000 * uncached_p50,
            "uncached_over_cached": uncached_p50 / hit_p50 if hit_samples else None,
            "stats": None if cache_stats is None else cache_stats.__dict__,
        },
        "single_turn": single,
        "vllm_frontend_ms_p50": {who: 1000 * v for who, v in frontend_s.items()},
        "stream_interval": {"agent": settings.llm.stream_interval, "baseline": 1},
        "query_embedding_ms_p50": embed_ms,
        "overhead_target_ms": target_ms,
        "overhead_target_met": single["agent"]["overhead_ms_p50"] <= target_ms,
        "conversation": {
            "prefix_turns": turns,
            "prefix_hit_rate": {"agent": prefix_rate(agent_conv[:turns]), "baseline": prefix_rate(base_conv[:turns])},
            "prompt_tokens_per_turn": {
                "agent": [s.prompt_tokens for s in agent_conv],
                "baseline": [s.prompt_tokens for s in base_conv],
            },
            "computed_tokens_per_turn": {
                "agent": [s.computed_tokens for s in agent_conv],
                "baseline": [s.computed_tokens for s in base_conv],
            },
            "total_ms_per_turn": {
                "agent": [1000 * s.total_s for s in agent_conv],
                "baseline": [1000 * s.total_s for s in base_conv],
            },
        },
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    cache, single, conv = result["cache"], result["single_turn"], result["conversation"]
    labels = ["cache hit", "agent\nuncached", "baseline"]
    values = [cache["hit_ms_p50"], single["agent"]["total_ms_p50"], single["baseline"]["total_ms_p50"]]
    axes[0].bar(labels, values, color=["tab:green", "tab:blue", "tab:gray"])
    axes[0].set_yscale("log")
    axes[0].set_ylabel("full turn p50 (ms, log scale)")
    axes[0].set_title(f"Turn latency (cache hit p99 {cache['hit_ms_p99']:.0f} ms)")
    overhead = [single["agent"]["overhead_ms_p50"], single["baseline"]["overhead_ms_p50"]]
    axes[1].bar(["agent", "baseline"], overhead, color=["tab:blue", "tab:gray"])
    axes[1].set_ylabel("end-to-end minus time inside vLLM, p50 (ms)")
    axes[1].set_title(f"Orchestration overhead ({result['index']['chunks']} chunks)")
    sent, computed = conv["prompt_tokens_per_turn"], conv["computed_tokens_per_turn"]
    for who, color in (("agent", "tab:blue"), ("baseline", "tab:gray")):
        turns = range(1, len(sent[who]) + 1)
        axes[2].plot(turns, sent[who], marker="o", color=color, label=f"{who}: sent")
        axes[2].plot(turns, computed[who], linestyle="--", color=color, label=f"{who}: prefilled (not prefix-cached)")
    rates = conv["prefix_hit_rate"]
    axes[2].set_title(
        f"Prompt tokens per turn\nprefix-cache hits over {conv['prefix_turns']} turns: "
        f"agent {100 * rates['agent']:.0f}%, baseline {100 * rates['baseline']:.0f}%"
    )
    axes[2].set_xlabel("turn (agent: summary memory; baseline: full history)")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(result: dict[str, Any]) -> str:
    """The Markdown table for the README."""
    cache, single, conv = result["cache"], result["single_turn"], result["conversation"]
    agent, base = single["agent"], single["baseline"]
    front = result["vllm_frontend_ms_p50"]
    rates = conv["prefix_hit_rate"]
    sent, computed = conv["prompt_tokens_per_turn"], conv["computed_tokens_per_turn"]
    last = len(sent["agent"])
    ratio = cache["uncached_over_cached"]

    def at(values: list[float]) -> str:
        return " / ".join(f"{values[i - 1]:.0f}" for i in (1, 10, last) if i <= len(values))

    rows = [
        "| figure | agent | plain baseline | target |",
        "| --- | --- | --- | --- |",
        f"| cache-hit full turn (paraphrase) p50 / p99 | {cache['hit_ms_p50']:.1f} / {cache['hit_ms_p99']:.1f} ms "
        f"({cache['hits']}/{cache['turns']} hits) | no cache | p50 <= 20 ms |",
        f"| uncached / cached turn, p50 | {ratio:.0f}x ({cache['uncached_ms_p50']:.0f} ms vs "
        f"{cache['hit_ms_p50']:.1f} ms) | - | >= 50x |",
        f"| full turn p50, uncached | {agent['total_ms_p50']:.0f} ms | {base['total_ms_p50']:.0f} ms | - |",
        f"| time to first token p50 | {agent['ttft_ms_p50']:.0f} ms | {base['ttft_ms_p50']:.0f} ms | - |",
        f"| orchestration overhead p50 ({result['index']['chunks']} chunks) | {agent['overhead_ms_p50']:.1f} ms | "
        f"{base['overhead_ms_p50']:.1f} ms | <= 30 ms + 1 embedding ({result['query_embedding_ms_p50']:.1f} ms) "
        f"= {result['overhead_target_ms']:.1f} ms: {'met' if result['overhead_target_met'] else 'missed'} |",
        f"| ... minus vLLM engine time only (front end {front['agent']:.0f} / {front['baseline']:.0f} ms counted "
        f"as ours) | {agent['overhead_engine_ms_p50']:.1f} ms | {base['overhead_engine_ms_p50']:.1f} ms | - |",
        f"| ... of which retrieval / cache lookup p50 | {agent['retrieval_ms_p50']:.1f} / "
        f"{agent['cache_lookup_ms_p50']:.1f} ms | {base['retrieval_ms_p50']:.1f} ms / - | - |",
        f"| prefix-cache hit rate, {conv['prefix_turns']}-turn conversation | {100 * rates['agent']:.0f}% | "
        f"{100 * rates['baseline']:.0f}% | >= 50% |",
        f"| prompt tokens sent, turn 1 / 10 / {last} | {at(sent['agent'])} | {at(sent['baseline'])} | - |",
        f"| prompt tokens prefilled (not cached), turn 1 / 10 / {last} | {at(computed['agent'])} | "
        f"{at(computed['baseline'])} | - |",
        f"| prompt tokens sent / prefilled, sum of {last} turns | {sum(sent['agent']):.0f} / "
        f"{sum(computed['agent']):.0f} | {sum(sent['baseline']):.0f} / {sum(computed['baseline']):.0f} | - |",
    ]
    load = result["setup"]["load_average_1m_before_after"]
    rows.append(f"\n{result['setup']['cpus']} cores, 1-min load average {load[0]:.1f} before / {load[1]:.1f} after.")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chains", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", help="use this running OpenAI-compatible server instead of starting vLLM")
    parser.add_argument("--model", help="served model name at --base-url (default: the first it lists)")
    parser.add_argument("--squad", type=Path, default=DEFAULT_SQUAD, help="SQuAD v1.1 JSON (corpus and questions)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="index, cache, conversations (reused)")
    parser.add_argument("--cache-turns", type=int, default=40, help="cached questions, each then asked paraphrased")
    parser.add_argument(
        "--paraphrases",
        type=Path,
        default=REPO_ROOT / "data" / "cache_eval" / "near_misses.json",
        help="groups of a cached question and its paraphrases",
    )
    parser.add_argument("--overhead-turns", type=int, default=30)
    parser.add_argument("--memory-turns", type=int, default=20)
    parser.add_argument("--articles", type=int, default=0, help="index only the first N SQuAD articles (0: all)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    quick = {"articles": 2, "cache_turns": 8, "overhead_turns": 6, "memory_turns": 8}
    args = parse_args(parser, argv, quick={**quick, "workdir": DEFAULT_WORKDIR.with_name("bench-chains-quick")})
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("httpx", "chains", "chromadb", "gptcache"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    work = args.workdir.resolve()
    (work / "docs").mkdir(parents=True, exist_ok=True)
    for stale in (work / "conversations.sqlite", work / "conversations.sqlite-wal", work / "conversations.sqlite-shm"):
        stale.unlink(missing_ok=True)
    settings = load_settings(
        "cpu",
        serving={"max_model_len": 4096, "max_num_batched_tokens": 4096},
        index={"index_dir": work / "index", "docs_dir": work / "docs", "chunk_size": 48, "chunk_overlap": 0},
        llm={"max_tokens": 128, "request_timeout_s": 120},
        chains={"conversations_db": work / "conversations.sqlite"},
        cache={"dir": work / "cache"},
    )
    articles = squad_paragraphs(args.squad)[: args.articles or None]
    started = time.perf_counter()
    chunks = build_index(settings, articles)
    index_s = time.perf_counter() - started

    rng = random.Random(1)
    questions = [q for _, _, qs in articles for q in qs]
    rng.shuffle(questions)
    conversation = [q for _, _, qs in articles[:3] for q in qs][: args.memory_turns]

    from indexing.retrieval import open_retriever

    retriever = open_retriever(settings.index)
    server = None
    if args.base_url:
        settings.llm.base_url = args.base_url.rstrip("/")
        settings.llm.model = args.model or httpx.get(f"{settings.llm.base_url}/models").json()["data"][0]["id"]
    else:
        from serving.launch import EngineServer, free_port

        settings.serving.port = free_port()
        settings.llm.base_url = f"http://127.0.0.1:{settings.serving.port}/v1"
        server = EngineServer(settings.serving).start()
        log.info("vLLM ready in %.0f s at %s", server.startup_s or 0, settings.llm.base_url)
    load_before = os.getloadavg()
    try:
        result = asyncio.run(run(settings, retriever, questions, conversation, args))
    finally:
        if server is not None:
            server.stop()
    load_after = os.getloadavg()
    result["index"] = {"chunks": chunks, "chunk_size": settings.index.chunk_size, "build_or_update_s": index_s}
    result["setup"] = {
        "model": settings.serving.model if server else settings.llm.model,
        "server": "started by the benchmark" if server else settings.llm.base_url,
        "profile": settings.profile,
        "max_tokens": settings.llm.max_tokens,
        "context_token_budget": settings.chains.context_token_budget,
        "history_token_budget": settings.chains.history_token_budget,
        "keep_last_messages": settings.chains.keep_last_messages,
        "top_k": settings.index.top_k,
        "cpus": os.cpu_count(),
        "load_average_1m_before_after": [load_before[0], load_after[0]],
        "python": platform.python_version(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "note": "tiny random-weights model: answers are noise; latencies and token counts are real",
    }
    write_results(result, args.out, "chains", plot, table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
