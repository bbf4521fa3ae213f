"""Serving benchmark: latency, throughput, batching, speculation and prefix caching of vLLM.

    python -m bench.serve [--profile cpu] [--base-url URL] [--out bench/results]

By default it starts its own servers with `serving.launch`, one after another (never two at
once), all from the same profile and on the same RAG-shaped prompts (a long shared context of
passages, then a question):

- base (speculation off, prefix caching on): start-up time, peak memory of the engine process
  tree, and a concurrency sweep (1, 4, 16; 64 on a GPU): TTFT p50/p95, TPOT, output tokens/s,
  requests/s; batching gain = requests/s at 16 / at 1; TTFT as a share of full-answer time.
  Answers stream in chunks of the profile's `llm.stream_interval` tokens, as the chains ask;
- spec (n-gram speculation on) vs base: time per output token at concurrency 1. The answers are
  restricted to the context's tokens, so they quote it as far as a random model can;
- no-prefix (prefix caching off) vs base: TTFT of questions over one long shared context.

Output lengths are fixed (`ignore_eos` + `min_tokens`) so runs compare. With `--base-url` only
the sweep runs, against that server. Results: bench/results/serve.json and serve.png.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import inspect
import json
import logging
import os
import platform
import random
import re
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam
from tqdm import tqdm

from bench.common import chat_server, parse_args
from bench.metrics import percentile
from config import load_settings
from config.settings import REPO_ROOT, ServingSettings
from serving.command import resolve_device
from serving.launch import EngineServer, free_port, group_pids
from serving.tiny_model import DEFAULT_DIR, build_tiny_model

log = logging.getLogger("bench.serve")
Messages = list[ChatCompletionMessageParam]
SEED = 7
OUTPUT_TOKENS = 128
"""Tokens per answer in the sweep and the speculation A/B (a typical RAG answer length)."""
PREFIX_OUTPUT_TOKENS = 8
TTFT_REQUESTS = 20
"""Sequential streamed 128-token answers per server for the TTFT share, with speculation off and on."""
HELD_BACK_SHARE = 0.9
"""A first chunk later than this share of the answer came (nearly) with the last: streaming stalled."""
PASSAGES = 8
"""Passages in the shared context (about 1,000 tokens of the tiny model's tokenizer)."""


@dataclass(frozen=True)
class Sample:
    """One streamed request."""

    ttft_s: float
    total_s: float
    output_tokens: int


@dataclass(frozen=True)
class Level:
    """A batch of requests at one concurrency."""

    concurrency: int
    requests: int
    wall_s: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    tpot_server_ms: float
    """Mean time per output token inside vLLM: streamed chunks can arrive in bursts, so the
    client-side gaps between them understate it for a model this fast."""
    output_tok_s: float
    req_s: float
    ttft_share_p50: float


class PeakMemory:
    """Samples RSS (and PSS, which does not double-count shared pages) of a process group."""

    def __init__(self, pgid: int, interval_s: float = 0.5):
        self.pgid = pgid
        self.peak_rss = 0
        self.peak_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval_s,), daemon=True)
        self._thread.start()

    def _run(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            rss = pss = 0
            for pid in group_pids(self.pgid):
                rss += _kib(f"/proc/{pid}/status", "VmRSS:")
                pss += _kib(f"/proc/{pid}/smaps_rollup", "Pss:")
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {"peak_rss_gib": self.peak_rss / 2**20, "peak_pss_gib": self.peak_pss / 2**20}


def _kib(path: str, key: str) -> int:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rag_context(seed: int = SEED) -> str:
    """Retrieved passages as a RAG prompt carries them, from stdlib docs (no data files needed)."""
    sentences: list[str] = []
    for name in ("json", "csv", "argparse", "logging", "pathlib", "functools", "itertools", "collections"):
        for _, member in inspect.getmembers(importlib.import_module(name)):
            doc = inspect.getdoc(member) if callable(member) else None
            if doc:
                sentences += [s.strip() for s in re.split(r"(?<=[.!?])\s+", doc) if 40 < len(s.strip()) < 200]
    rng = random.Random(seed)
    rng.shuffle(sentences)
    passages = [" ".join(sentences[i * 6 : i * 6 + 6]) for i in range(PASSAGES)]
    return "\n\n".join(f"[{i + 1}] (source: docs/part-{i + 1}.md)\n{p}" for i, p in enumerate(passages))


def questions(n: int, seed: int = SEED) -> list[str]:
    topics = ["parsing", "logging handlers", "paths", "caching", "iterators", "CSV dialects", "JSON decoding"]
    rng = random.Random(seed)
    return [f"Question {i}: what do the passages say about {rng.choice(topics)}? Quote them." for i in range(n)]


def messages(context: str, question: str) -> Messages:
    system = "Answer only from the numbered passages below and cite them like [2].\n\n" + context
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


async def one_request(
    client: AsyncOpenAI, model: str, msgs: Messages, tokens: int, extra: dict[str, Any] | None = None
) -> Sample:
    started = time.perf_counter()
    first: float | None = None
    usage_tokens = 0
    stream = await client.chat.completions.create(
        model=model,
        messages=msgs,
        max_completion_tokens=tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True, "min_tokens": tokens, **(extra or {})},
    )
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter()
        if chunk.usage is not None:
            usage_tokens = chunk.usage.completion_tokens
    end = time.perf_counter()
    if usage_tokens != tokens:
        raise RuntimeError(f"asked for {tokens} tokens, got {usage_tokens}: outputs would not compare")
    return Sample(ttft_s=(first or end) - started, total_s=end - started, output_tokens=usage_tokens)


async def run_level(
    client: AsyncOpenAI, root_url: str, model: str, prompts: list[Messages], concurrency: int, *, stream_interval: int
) -> Level:
    gate = asyncio.Semaphore(concurrency)
    before = scrape(root_url)
    extra = {"stream_interval": stream_interval} if stream_interval > 1 else None

    async def gated(msgs: Messages) -> Sample:
        async with gate:
            return await one_request(client, model, msgs, OUTPUT_TOKENS, extra)

    started = time.perf_counter()
    samples = await asyncio.gather(*(gated(p) for p in prompts))
    wall = time.perf_counter() - started
    after = scrape(root_url)
    ttfts = [s.ttft_s for s in samples]
    return Level(
        concurrency=concurrency,
        requests=len(samples),
        wall_s=wall,
        ttft_p50_ms=1000 * statistics.median(ttfts),
        ttft_p95_ms=1000 * percentile(ttfts, 95),
        tpot_server_ms=1000 * mean_delta(before, after, TPOT_HISTOGRAM),
        output_tok_s=sum(s.output_tokens for s in samples) / wall,
        req_s=len(samples) / wall,
        ttft_share_p50=statistics.median(s.ttft_s / s.total_s for s in samples),
    )


def ttft_share(samples: list[Sample]) -> dict[str, float]:
    """How early the first chunk comes, as a share of the whole answer's time (streaming works when small)."""
    shares = [s.ttft_s / s.total_s for s in samples]
    return {
        "requests": len(samples),
        "share_p50": statistics.median(shares),
        "share_p95": percentile(shares, 95),
        "ttft_p50_ms": 1000 * statistics.median(s.ttft_s for s in samples),
        "total_p50_ms": 1000 * statistics.median(s.total_s for s in samples),
        "held_back": sum(share > HELD_BACK_SHARE for share in shares),
    }


async def sweep(base_url: str, model: str, levels: list[int], context: str, stream_interval: int) -> list[Level]:
    client = AsyncOpenAI(base_url=base_url, api_key="EMPTY", timeout=600, max_retries=0)
    root_url = base_url.removesuffix("/v1")
    try:
        await one_request(client, model, messages(context, "Warm-up."), 8)
        results = []
        for concurrency in tqdm(levels, desc="concurrency sweep", disable=not sys.stderr.isatty()):
            prompts = [messages(context, q) for q in questions(max(16, 3 * concurrency))]
            results.append(
                await run_level(client, root_url, model, prompts, concurrency, stream_interval=stream_interval)
            )
        return results
    finally:
        await client.close()


async def sequential(
    base_url: str, model: str, prompts: list[Messages], tokens: int, extra: dict[str, Any] | None = None
) -> list[Sample]:
    """Requests one at a time (concurrency 1), after one warm-up that fills the prefix cache."""
    client = AsyncOpenAI(base_url=base_url, api_key="EMPTY", timeout=600, max_retries=0)
    try:
        await one_request(client, model, prompts[0], tokens, extra)
        return [await one_request(client, model, p, tokens, extra) for p in prompts]
    finally:
        await client.close()


_SAMPLE = re.compile(r"^([A-Za-z_:][\w:]*)(?:\{[^}]*\})? (\S+)$", re.MULTILINE)
TPOT_HISTOGRAM = "vllm:request_time_per_output_token_seconds"
PREFILL_HISTOGRAM = "vllm:request_prefill_time_seconds"
SPEC_COUNTERS = ("vllm:spec_decode_num_draft_tokens_total", "vllm:spec_decode_num_accepted_tokens_total")
PREFIX_COUNTERS = ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total")


def scrape(root_url: str) -> dict[str, float]:
    """vLLM's /metrics as {series name: value summed over label sets}."""
    totals: dict[str, float] = {}
    for name, value in _SAMPLE.findall(httpx.get(f"{root_url}/metrics", timeout=10).text):
        with contextlib.suppress(ValueError):
            totals[name] = totals.get(name, 0.0) + float(value)
    return totals


def mean_delta(before: dict[str, float], after: dict[str, float], histogram: str) -> float:
    """Mean of the observations a histogram received between two scrapes."""
    count = after.get(f"{histogram}_count", 0.0) - before.get(f"{histogram}_count", 0.0)
    total = after.get(f"{histogram}_sum", 0.0) - before.get(f"{histogram}_sum", 0.0)
    return total / count if count else float("nan")


def delta(before: dict[str, float], after: dict[str, float], name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


def context_token_ids(root_url: str, model: str, context: str) -> list[int]:
    response = httpx.post(f"{root_url}/tokenize", json={"model": model, "prompt": context}, timeout=30)
    response.raise_for_status()
    return sorted(set(response.json()["tokens"]))


RAG_CHATS = 12
"""Held-out synthetic RAG turns (the chains' own prompts and tool schema) for the speculation row."""


def rag_chats(n: int = RAG_CHATS) -> list[dict[str, Any]]:
    """Answer turns as the agent sends them: system prompt, tool schema, numbered passages, question.

    Held-out sentences only, so a trained tiny model (`RAG_SERVING__MODEL=models/tiny-trained`) is
    measured on text it never saw in training."""
    from chains.synthetic import Renderer

    renderer = Renderer(SEED, held_out=True)
    chats = [renderer.example("answer") for _ in range(n)]
    return [{"messages": c["messages"][:-1], "tools": c["tools"]} for c in chats]


async def rag_speculation(base_url: str, model: str, chats: list[dict[str, Any]]) -> dict[str, Any]:
    """Natural-length answers to real RAG turns, one at a time: TPOT inside vLLM, output tokens/s,
    TTFT share, n-gram drafts and acceptances, and how many answers quote their prompt verbatim."""
    client = AsyncOpenAI(base_url=base_url, api_key="EMPTY", timeout=600, max_retries=0)
    root_url = base_url.removesuffix("/v1")

    async def ask(chat: dict[str, Any]) -> tuple[Sample, str]:
        started = time.perf_counter()
        first: float | None = None
        text, tokens = "", 0
        stream = await client.chat.completions.create(
            model=model,
            messages=chat["messages"],
            **({"tools": chat["tools"]} if chat["tools"] else {}),
            max_completion_tokens=96,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or time.perf_counter()
                text += chunk.choices[0].delta.content
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        end = time.perf_counter()
        return Sample(ttft_s=(first or end) - started, total_s=end - started, output_tokens=tokens), text

    try:
        await ask(chats[0])  # warm-up: fills the prefix cache with the system prompt and tools
        before = scrape(root_url)
        answers = [await ask(chat) for chat in chats]
        after = scrape(root_url)
    finally:
        await client.close()
    samples = [sample for sample, _ in answers]
    quoted = 0
    for (_, text), chat in zip(answers, chats, strict=True):
        sentence = re.sub(r"\s*\[\d+\]$", "", text.strip())
        quoted += bool(sentence) and sentence in chat["messages"][-1]["content"]
    drafted, accepted = (delta(before, after, k) for k in SPEC_COUNTERS)
    return {
        "requests": len(samples),
        "output_tokens": sum(s.output_tokens for s in samples),
        "tpot_server_ms": 1000 * mean_delta(before, after, TPOT_HISTOGRAM),
        "output_tok_s": sum(s.output_tokens for s in samples) / sum(s.total_s for s in samples),
        "ttft_share_p50": statistics.median(s.ttft_s / s.total_s for s in samples),
        "answer_p50_ms": 1000 * statistics.median(s.total_s for s in samples),
        "draft_tokens": drafted,
        "accepted_tokens": accepted,
        "quoted_answers": quoted,
    }


def start(serving: ServingSettings, label: str) -> tuple[EngineServer, PeakMemory]:
    serving = serving.model_copy(update={"port": free_port(), "host": "127.0.0.1"})
    server = EngineServer(serving, log_path=serving.run_dir / f"bench-serve-{label}.log")
    server.start()  # the memory sampler starts after: a failed start leaves nothing to sample
    assert server.pid is not None
    log.info("%s server ready in %.1f s", label, server.startup_s or 0)
    return server, PeakMemory(server.pid)


def run_started(profile: str) -> dict[str, Any]:
    """All three configurations, one server at a time."""
    settings = load_settings(profile)
    interval = settings.llm.stream_interval
    base = settings.serving.model_copy(update={"speculative_method": "off", "enable_prefix_caching": True})
    if base.model == "models/tiny-chat":
        build_tiny_model(DEFAULT_DIR)
    device = resolve_device(base.device)
    levels = [1, 4, 16, 64] if device == "cuda" else [1, 4, 16]
    context = rag_context()
    spec_serving = base.model_copy(
        update={"speculative_method": "ngram", "num_speculative_tokens": settings.serving.num_speculative_tokens}
    )
    plan = [
        ("base", base),
        ("spec", spec_serving),
        ("no-prefix", base.model_copy(update={"enable_prefix_caching": False})),
    ]
    prefix_prompts = [messages(context, q) for q in questions(12, seed=SEED + 1)]
    spec_prompts = [messages(context, q) for q in questions(6, seed=SEED + 2)]
    ttft_prompts = [messages(context, q) for q in questions(TTFT_REQUESTS, seed=SEED + 3)]
    chats = rag_chats()
    chunking = {"stream_interval": interval} if interval > 1 else None
    result: dict[str, Any] = {"device": device, "servers": {}, "stream_interval": interval}
    for label, serving in tqdm(plan, desc="servers", disable=not sys.stderr.isatty()):
        server, memory = start(serving, label)
        entry: dict[str, Any] = {"startup_s": server.startup_s, "command": server.command.shell()}
        try:
            url, model = server.base_url, serving.served_model_name
            allowed = {"allowed_token_ids": context_token_ids(server.root_url, model, context)}
            if label == "base":
                entry["levels"] = [asdict(level) for level in asyncio.run(sweep(url, model, levels, context, interval))]
            if label in ("base", "spec"):
                entry["ttft_share"] = ttft_share(
                    asyncio.run(sequential(url, model, ttft_prompts, OUTPUT_TOKENS, chunking))
                )
                before = scrape(server.root_url)
                samples = asyncio.run(sequential(url, model, spec_prompts, OUTPUT_TOKENS, allowed))
                after = scrape(server.root_url)
                entry["quote_tpot_server_ms"] = 1000 * mean_delta(before, after, TPOT_HISTOGRAM)
                entry["quote_total_p50_ms"] = 1000 * statistics.median(s.total_s for s in samples)
                entry["spec_counters"] = {k.split(":")[1]: delta(before, after, k) for k in SPEC_COUNTERS}
                entry["rag_speculation"] = asyncio.run(rag_speculation(url, model, chats))
            if label in ("base", "no-prefix"):
                before = scrape(server.root_url)
                samples = asyncio.run(sequential(url, model, prefix_prompts, PREFIX_OUTPUT_TOKENS))
                after = scrape(server.root_url)
                entry["rag_ttft_p50_ms"] = 1000 * statistics.median(s.ttft_s for s in samples)
                entry["rag_prefill_server_ms"] = 1000 * mean_delta(before, after, PREFILL_HISTOGRAM)
                queries = delta(before, after, PREFIX_COUNTERS[0])
                entry["prefix_hit_rate"] = delta(before, after, PREFIX_COUNTERS[1]) / queries if queries else 0.0
        finally:
            server.stop()
            entry.update(memory.stop())
        result["servers"][label] = entry
    return result


def sweep_levels(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """The concurrency sweep: on the base server we started, or on the server given by URL."""
    levels: list[dict[str, Any]] = raw["servers"]["base"]["levels"] if "base" in raw["servers"] else raw["levels"]
    return levels


def summarize(raw: dict[str, Any], profile: str, model: str) -> dict[str, Any]:
    servers = raw["servers"]
    by_c = {lvl["concurrency"]: lvl for lvl in sweep_levels(raw)}
    summary: dict[str, Any] = {
        "batching_gain_16_vs_1": by_c[16]["req_s"] / by_c[1]["req_s"] if 16 in by_c and 1 in by_c else None,
        "ttft_share_p50_at_1": by_c[1]["ttft_share_p50"] if 1 in by_c else None,
    }
    if "spec" in servers:
        base, spec = servers["base"], servers["spec"]
        drafted = spec["spec_counters"]["spec_decode_num_draft_tokens_total"]
        accepted = spec["spec_counters"]["spec_decode_num_accepted_tokens_total"]
        summary["speculation"] = {
            "tpot_ms_off": base["quote_tpot_server_ms"],
            "tpot_ms_on": spec["quote_tpot_server_ms"],
            "speedup": base["quote_tpot_server_ms"] / spec["quote_tpot_server_ms"],
            "answer_p50_ms_off": base["quote_total_p50_ms"],
            "answer_p50_ms_on": spec["quote_total_p50_ms"],
            "draft_tokens": drafted,
            "draft_acceptance": accepted / drafted if drafted else 0.0,
        }
    if "spec" in servers and "rag_speculation" in servers["spec"]:
        off, on = servers["base"]["rag_speculation"], servers["spec"]["rag_speculation"]
        summary["rag_speculation"] = {
            "tpot_ms_off": off["tpot_server_ms"],
            "tpot_ms_on": on["tpot_server_ms"],
            "speedup": off["tpot_server_ms"] / on["tpot_server_ms"],
            "output_tok_s_off": off["output_tok_s"],
            "output_tok_s_on": on["output_tok_s"],
            "ttft_share_p50_off": off["ttft_share_p50"],
            "ttft_share_p50_on": on["ttft_share_p50"],
            "draft_tokens": on["draft_tokens"],
            "draft_acceptance": on["accepted_tokens"] / on["draft_tokens"] if on["draft_tokens"] else 0.0,
            "quoted_answers": f"{on['quoted_answers']}/{on['requests']}",
        }
    if "spec" in servers:
        summary["ttft_share_sequential"] = {"off": servers["base"]["ttft_share"], "on": servers["spec"]["ttft_share"]}
    if "no-prefix" in servers:
        on, off = servers["base"], servers["no-prefix"]
        summary["prefix_caching"] = {
            "ttft_p50_ms_on": on["rag_ttft_p50_ms"],
            "ttft_p50_ms_off": off["rag_ttft_p50_ms"],
            "speedup": off["rag_ttft_p50_ms"] / on["rag_ttft_p50_ms"],
            "prefill_ms_on": on["rag_prefill_server_ms"],
            "prefill_ms_off": off["rag_prefill_server_ms"],
            "hit_rate_on": on["prefix_hit_rate"],
        }
    if "base" in servers and "startup_s" in servers["base"]:
        summary["startup_s"] = servers["base"]["startup_s"]
        summary["peak_rss_gib"] = servers["base"]["peak_rss_gib"]
        summary["peak_pss_gib"] = servers["base"]["peak_pss_gib"]
    tiny = model == "models/tiny-chat" or Path(model).resolve() == DEFAULT_DIR
    return {
        "benchmark": "serve",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "model": f"tiny random-weights model on {raw['device'].upper()}" if tiny else model,
        "profile": profile,
        "output_tokens": {"sweep": OUTPUT_TOKENS, "speculation": OUTPUT_TOKENS, "prefix_ttft": PREFIX_OUTPUT_TOKENS},
        "targets": {"batching_gain": ">= 3", "ttft_share": "<= 0.20", "startup_s": "<= 60", "peak_rss_gib": "<= 4"},
        "summary": summary,
        "raw": raw,
    }


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cores": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem_gib, 1), "python": platform.python_version()}


def table(report: dict[str, Any]) -> str:
    m, s = report["machine"], report["summary"]
    levels = sweep_levels(report["raw"])
    lines = [
        f"Serving benchmark: {report['model']}, profile `{report['profile']}`, "
        f"{m['cores']} cores ({m['cpu']}, load average {m['load_avg_1m_at_start']} at start), "
        f"{report['output_tokens']['sweep']} output tokens per request, streamed "
        f"{report['raw'].get('stream_interval', 1)} per chunk",
        "",
        "| concurrency | requests | TTFT p50 (ms) | TTFT p95 (ms) | TPOT in vLLM (ms) | output tok/s | req/s "
        "| TTFT share |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for lvl in levels:
        lines.append(
            f"| {lvl['concurrency']} | {lvl['requests']} | {lvl['ttft_p50_ms']:.0f} | {lvl['ttft_p95_ms']:.0f} "
            f"| {lvl['tpot_server_ms']:.2f} | {lvl['output_tok_s']:.0f} | {lvl['req_s']:.2f} "
            f"| {100 * lvl['ttft_share_p50']:.0f} % |"
        )
    lines += ["", "| figure | value | target |", "| --- | ---: | ---: |"]
    if s.get("batching_gain_16_vs_1") is not None:
        lines.append(f"| batching gain (req/s at 16 / at 1) | {s['batching_gain_16_vs_1']:.1f}x | >= 3x |")
    if s.get("ttft_share_p50_at_1") is not None:
        lines.append(
            f"| TTFT share of full answer (p50, concurrency 1) | {100 * s['ttft_share_p50_at_1']:.0f} % | <= 20 % |"
        )
    if "ttft_share_sequential" in s:
        off, on = s["ttft_share_sequential"]["off"], s["ttft_share_sequential"]["on"]
        lines.append(
            f"| TTFT share, {off['requests']} sequential answers, speculation off / on (p50; p95) "
            f"| {100 * off['share_p50']:.0f} / {100 * on['share_p50']:.0f} % "
            f"({100 * off['share_p95']:.0f} / {100 * on['share_p95']:.0f} %; first chunk held to the end "
            f"{off['held_back']} / {on['held_back']} times) | <= 20 % |"
        )
    if "speculation" in s:
        sp = s["speculation"]
        lines.append(
            f"| n-gram speculation: TPOT in vLLM off / on | {sp['tpot_ms_off']:.2f} / {sp['tpot_ms_on']:.2f} ms "
            f"({sp['speedup']:.2f}x; {sp['draft_tokens']:.0f} draft tokens, "
            f"{100 * sp['draft_acceptance']:.0f} % accepted) | |"
        )
    if "rag_speculation" in s:
        rs = s["rag_speculation"]
        lines.append(
            f"| n-gram speculation on RAG answers (natural length): TPOT in vLLM off / on "
            f"| {rs['tpot_ms_off']:.2f} / {rs['tpot_ms_on']:.2f} ms ({rs['speedup']:.2f}x; "
            f"{rs['output_tok_s_off']:.0f} / {rs['output_tok_s_on']:.0f} output tok/s; "
            f"{rs['draft_tokens']:.0f} draft tokens, {100 * rs['draft_acceptance']:.0f} % accepted; "
            f"TTFT share {100 * rs['ttft_share_p50_off']:.0f} / {100 * rs['ttft_share_p50_on']:.0f} %; "
            f"answers quoting their passages {rs['quoted_answers']}) | TPOT gain |"
        )
    if "prefix_caching" in s:
        pc = s["prefix_caching"]
        lines.append(
            f"| prefix caching: RAG TTFT p50 off / on | {pc['ttft_p50_ms_off']:.0f} / {pc['ttft_p50_ms_on']:.0f} ms "
            f"({pc['speedup']:.2f}x; prefill in vLLM {pc['prefill_ms_off']:.1f} / {pc['prefill_ms_on']:.1f} ms; "
            f"{100 * pc['hit_rate_on']:.0f} % of prompt tokens hit) | |"
        )
    if "startup_s" in s:
        lines.append(f"| engine start-up to /health | {s['startup_s']:.0f} s | <= 60 s |")
        lines.append(
            f"| peak memory of the engine process tree | RSS {s['peak_rss_gib']:.2f} GiB (PSS {s['peak_pss_gib']:.2f}) "
            "| <= 4 GB |"
        )
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sweep_levels(report["raw"])
    conc = [lvl["concurrency"] for lvl in levels]
    s = report["summary"]
    ab = [key for key in ("speculation", "prefix_caching") if key in s]
    fig, axes = plt.subplots(1, 2 + len(ab), figsize=(5 * (2 + len(ab)), 4.2), squeeze=False)
    ax = axes[0][0]
    lines = ax.plot(conc, [lvl["req_s"] for lvl in levels], "o-", label="requests/s")
    ax.set_ylabel("requests/s")
    twin = ax.twinx()
    lines += twin.plot(conc, [lvl["output_tok_s"] for lvl in levels], "s--", color="tab:orange", label="tokens/s")
    twin.set_ylabel("output tokens/s")
    ax.set_title("Throughput (continuous batching)")
    ax.legend(handles=lines, loc="upper left")
    ax = axes[0][1]
    ax.plot(conc, [lvl["ttft_p50_ms"] for lvl in levels], "o-", label="p50")
    ax.plot(conc, [lvl["ttft_p95_ms"] for lvl in levels], "o--", label="p95")
    ax.set_ylabel("ms")
    ax.set_title("Time to first token (client)")
    ax.legend()
    for ax in (axes[0][0], axes[0][1]):
        ax.set_xscale("log", base=2)
        ax.set_xticks(conc, [str(c) for c in conc])
        ax.set_xlabel("concurrent requests")
    panels = {
        "speculation": ("n-gram speculation: TPOT in vLLM", "tpot_ms_off", "tpot_ms_on", "ms per output token"),
        "prefix_caching": ("prefix caching: RAG TTFT (client p50)", "ttft_p50_ms_off", "ttft_p50_ms_on", "ms"),
    }
    for ax, key in zip(axes[0][2:], ab, strict=True):
        title, off, on, unit = panels[key]
        ax.bar(["off", "on"], [s[key][off], s[key][on]], color=["tab:gray", "tab:blue"])
        ax.set_title(title)
        ax.set_ylabel(unit)
    m = report["machine"]
    fig.suptitle(
        f"{report['model']}: {m['cores']} cores, {m['cpu']}, load average {m['load_avg_1m_at_start']} "
        f"(profile {report['profile']})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default=None, help="settings profile (default: cpu without a GPU, else balanced)")
    parser.add_argument("--base-url", help="measure only the concurrency sweep against this running server (.../v1)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    args = parse_args(parser, argv, quick={})
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    for name in ("bench.serve", "serving"):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)
    profile = args.profile or ("balanced" if resolve_device("auto") == "cuda" else "cpu")
    started = time.monotonic()
    load_at_start = round(os.getloadavg()[0], 2)
    if args.base_url or args.quick:
        # Quick mode: the sweep alone, on one server of the profile (the on/off comparisons of
        # speculation and prefix caching are in `python -m bench.profiles`).
        settings = load_settings(profile)
        if not args.base_url and settings.serving.model == "models/tiny-chat":
            build_tiny_model(DEFAULT_DIR)
        with chat_server(settings, args.base_url) as server:
            base_url, model = settings.llm.base_url or "", settings.llm.model or ""
            raw: dict[str, Any] = {
                "device": "external server" if args.base_url else resolve_device(settings.serving.device),
                "servers": {},
                "server": server,
                "stream_interval": settings.llm.stream_interval,
            }
            levels = asyncio.run(sweep(base_url, model, [1, 4, 16], rag_context(), settings.llm.stream_interval))
            raw["levels"] = [asdict(lvl) for lvl in levels]
        report = summarize(raw, profile, model if args.base_url else settings.serving.model)
    else:
        report = summarize(run_started(profile), profile, load_settings(profile).serving.model)
    report["runtime_s"] = round(time.monotonic() - started, 1)
    report["machine"]["load_avg_1m_at_start"] = load_at_start
    report["machine"]["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    plot(report, args.out / "serve.png")
    print(table(report))
    print(f"\nwritten: {args.out / 'serve.json'}, {args.out / 'serve.png'} ({report['runtime_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
