"""API benchmark: the OpenAI-compatible RAG API under load on loopback, for a fixed, bounded time.

    python -m bench.api [--base-url URL] [--seconds 15]

Starts the API (`python -m app.api`, its own process, so its RSS can be read) over an index of
the sample documents, against a real vLLM server (started here on the tiny CPU model unless
--base-url points at one). Then, for 1, 8 and 32 concurrent streaming clients, runs cache-miss
traffic and cache-hit traffic for `--seconds` each, interleaved (miss, hit, miss, hit, ...) so
both see the same machine load:

- miss: every question carries a number never asked before; the cache's number guard makes it a
  miss, so each turn pays lookup, retrieval and generation;
- hit: a few questions asked once during warm-up, then repeated verbatim.

Per phase: requests/s, TTFT p50/p95 seen by the client (first content chunk), errors, the share
of answers actually served from the cache, and the API's own overhead: the client's TTFT minus
the agent's TTFT for the same request (`timings.ttft_s` in the final chunk, measured inside the
agent in the API process), p50. Everything between the socket and the agent's turn (HTTP, auth,
JSON, SSE, the service layer, the hop to the agent's loop) is in that difference. The API
process's RSS is read before the load and after it. Results: bench/results/api.json, api.png.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.common import parse_args, write_results
from bench.metrics import percentile
from config import load_settings
from config.settings import REPO_ROOT, Settings

log = logging.getLogger("bench.api")

RESULTS = REPO_ROOT / "bench" / "results"
DEFAULT_WORKDIR = REPO_ROOT / ".run" / "bench-api"
CONCURRENCY = (1, 8, 32)
API_KEY = "bench-key"
HIT_QUESTIONS = (
    "How do I add my own documents to the index?",
    "Which file formats can it read?",
    "How do I start the model server?",
    "What does the semantic cache do?",
    "How do I delete a document?",
    "How do I use the Python API?",
    "What is hybrid retrieval?",
    "How are conversations remembered?",
)


@dataclass
class Phase:
    kind: str
    concurrency: int
    seconds: float = 0.0
    ttft_s: list[float] = field(default_factory=list)
    agent_ttft_s: list[float] = field(default_factory=list)
    total_s: list[float] = field(default_factory=list)
    cached: int = 0
    errors: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        done = len(self.total_s)
        overhead = [a - b for a, b in zip(self.ttft_s, self.agent_ttft_s, strict=True)]
        return {
            "kind": self.kind,
            "concurrency": self.concurrency,
            "seconds": self.seconds,
            "requests": done,
            "errors": len(self.errors),
            "error_samples": self.errors[:5],
            "req_per_s": done / self.seconds if self.seconds else 0.0,
            "ttft_ms_p50": _ms(self.ttft_s, 50),
            "ttft_ms_p95": _ms(self.ttft_s, 95),
            "total_ms_p50": _ms(self.total_s, 50),
            "agent_ttft_ms_p50": _ms(self.agent_ttft_s, 50),
            "api_overhead_ms_p50": _ms(overhead, 50),
            "api_overhead_ms_p95": _ms(overhead, 95),
            "served_from_cache": self.cached / done if done else 0.0,
        }


def _ms(values: Sequence[float], q: float) -> float | None:
    return percentile(values, q) * 1000 if values else None


async def one_turn(client: httpx.AsyncClient, question: str, phase: Phase, use_cache: bool) -> None:
    body = {"messages": [{"role": "user", "content": question}], "stream": True, "use_cache": use_cache}
    started = time.perf_counter()
    first: float | None = None
    final: dict[str, Any] | None = None
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                phase.errors.append(f"HTTP {response.status_code}: {(await response.aread())[:200]!r}")
                return
            async for line in response.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if first is None and chunk["choices"][0]["delta"].get("content"):
                    first = time.perf_counter()
                if chunk["choices"][0].get("finish_reason"):
                    final = chunk
    except httpx.HTTPError as exc:
        phase.errors.append(f"{type(exc).__name__}: {exc}")
        return
    if first is None or final is None or final["timings"]["ttft_s"] is None:
        phase.errors.append("stream ended without text or without its final chunk")
        return
    phase.ttft_s.append(first - started)
    phase.agent_ttft_s.append(final["timings"]["ttft_s"])
    phase.total_s.append(time.perf_counter() - started)
    phase.cached += bool(final["cached"])


async def run_phase(url: str, kind: str, concurrency: int, seconds: float, numbers: itertools.count[int]) -> Phase:
    phase = Phase(kind, concurrency)
    rng = random.Random(concurrency)
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=url, limits=limits, headers=headers, timeout=300) as client:
        end = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < end:
                if kind == "hit":
                    await one_turn(client, rng.choice(HIT_QUESTIONS), phase, True)
                else:
                    await one_turn(client, f"How do I set option {next(numbers)} when ingesting?", phase, True)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        phase.seconds = time.perf_counter() - started
    return phase


async def warm_up(url: str) -> None:
    """Fill the cache with the hit questions (and load every lazy part of the API process)."""
    phase = Phase("warm-up", 1)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=300) as client:
        for question in HIT_QUESTIONS:
            await one_turn(client, question, phase, True)
    if phase.errors:
        raise RuntimeError(f"warm-up failed: {phase.errors[0]}")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def start_api(settings: Settings, work: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "RAG_PROFILE": settings.profile,
        "RAG_INDEX__INDEX_DIR": str(settings.index.index_dir),
        "RAG_INDEX__DOCS_DIR": str(settings.index.docs_dir),
        "RAG_LLM__BASE_URL": str(settings.llm.base_url),
        "RAG_LLM__MODEL": str(settings.llm.model),
        "RAG_LLM__MAX_TOKENS": str(settings.llm.max_tokens),
        "RAG_CHAINS__CONVERSATIONS_DB": str(work / "conversations.sqlite"),
        "RAG_CACHE__DIR": str(work / "cache"),
        "RAG_API__STORE_DB": str(work / "app.sqlite"),
        "RAG_API__API_KEY": API_KEY,
        "RAG_API__PORT": str(port),
    }
    log_file = (work / "api.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "app.api"], cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT
    )


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the API exited with status {process.returncode}; see its log")
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError("the API did not become healthy in time")


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for kind, color in (("miss", "tab:blue"), ("hit", "tab:green")):
        rows = [p for p in result["phases"] if p["kind"] == kind]
        xs = [p["concurrency"] for p in rows]
        axes[0].plot(xs, [p["req_per_s"] for p in rows], marker="o", color=color, label=f"cache {kind}")
        axes[1].plot(xs, [p["ttft_ms_p50"] for p in rows], marker="o", color=color, label=f"cache {kind} p50")
        axes[1].plot(xs, [p["ttft_ms_p95"] for p in rows], marker="x", linestyle="--", color=color, label="p95")
        axes[2].plot(xs, [p["api_overhead_ms_p50"] for p in rows], marker="o", color=color, label=f"cache {kind}")
    axes[0].set_title("Requests/s")
    axes[1].set_title("TTFT seen by the client (ms, log)")
    axes[1].set_yscale("log")
    axes[2].set_title("API overhead p50: client TTFT - agent TTFT (ms)")
    axes[2].axhline(5, color="gray", linestyle=":", label="target 5 ms")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(CONCURRENCY), [str(c) for c in CONCURRENCY])
        ax.set_xlabel("concurrent clients")
        ax.legend(fontsize=8)
    rss = result["rss_mb"]
    fig.suptitle(f"API under load ({result['setup']['seconds_per_phase']:.0f} s per phase); "
                 f"API RSS {rss['before']:.0f} -> {rss['after']:.0f} MB")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(result: dict[str, Any]) -> str:
    """The Markdown table for the README."""
    rows = [
        "| clients | traffic | req/s | TTFT p50 / p95 | API overhead p50 | errors | served from cache |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in result["phases"]:
        rows.append(
            f"| {p['concurrency']} | cache {p['kind']} | {p['req_per_s']:.1f} | "
            f"{p['ttft_ms_p50']:.0f} / {p['ttft_ms_p95']:.0f} ms | {p['api_overhead_ms_p50']:.1f} ms | "
            f"{p['errors']} | {100 * p['served_from_cache']:.0f} % |"
        )
    rss, load = result["rss_mb"], result["setup"]["load_average_1m_before_after"]
    rows.append(
        f"\nAPI process RSS {rss['before']:.0f} MB before the load, {rss['after']:.0f} MB after; "
        f"{result['setup']['cpus']} cores, 1-min load average {load[0]:.1f} before / {load[1]:.1f} after."
    )
    return "\n".join(rows)


def sample_index(
    workdir: Path, max_tokens: int, *, startup_timeout_s: float, request_timeout_s: float
) -> tuple[Path, Settings, int]:
    """A clean work folder with the sample documents indexed, `cpu` settings that use it, and the
    chunk count: this benchmark and `bench.soak` load the API over the same index."""
    for noisy in ("httpx", "chromadb"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from indexing.pipeline import ingest

    work = workdir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    settings = load_settings(
        "cpu",
        serving={"startup_timeout_s": startup_timeout_s},
        index={"index_dir": work / "index", "docs_dir": REPO_ROOT / "data" / "docs"},
        llm={"max_tokens": max_tokens, "request_timeout_s": request_timeout_s},
    )
    report = ingest(settings.index, progress=False)
    log.info("index: %d documents, %d chunks", report.documents, report.chunks)
    return work, settings, report.chunks


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.api", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", help="use this running OpenAI-compatible server instead of starting vLLM")
    parser.add_argument("--model", help="served model name at --base-url (default: the first it lists)")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each phase")
    parser.add_argument("--max-tokens", type=int, default=64, help="answer length (llm.max_tokens)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parse_args(parser, argv, quick={"seconds": 3.0})
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # a loaded machine took over 300 s to start the engine
    work, settings, chunks = sample_index(args.workdir, args.max_tokens, startup_timeout_s=900, request_timeout_s=300)
    from serving.launch import EngineServer, free_port

    server = None
    if args.base_url:
        settings.llm.base_url = args.base_url.rstrip("/")
        settings.llm.model = args.model or httpx.get(f"{settings.llm.base_url}/models").json()["data"][0]["id"]
    else:
        settings.serving.port = free_port()
        settings.llm.base_url = f"http://127.0.0.1:{settings.serving.port}/v1"
        server = EngineServer(settings.serving).start()
        log.info("vLLM ready in %.0f s at %s", server.startup_s or 0, settings.llm.base_url)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    api = start_api(settings, work, port)
    try:
        wait_ready(url, api)
        asyncio.run(warm_up(url))
        rss_before = rss_mb(api.pid)
        load_before = os.getloadavg()
        numbers = itertools.count(100_000)
        phases = []
        for concurrency in CONCURRENCY:
            for kind in ("miss", "hit"):
                log.info("phase: %d clients, cache %s, %.0f s", concurrency, kind, args.seconds)
                phases.append(asyncio.run(run_phase(url, kind, concurrency, args.seconds, numbers)).summary())
        load_after = os.getloadavg()
        rss_after = rss_mb(api.pid)
    finally:
        api.terminate()
        api.wait(timeout=60)
        if server is not None:
            server.stop()
    result = {
        "phases": phases,
        "rss_mb": {"before": rss_before, "after": rss_after},
        "setup": {
            "model": settings.serving.model if server else settings.llm.model,
            "server": "started by the benchmark" if server else settings.llm.base_url,
            "profile": settings.profile,
            "max_tokens": settings.llm.max_tokens,
            "index_chunks": chunks,
            "seconds_per_phase": args.seconds,
            "cpus": os.cpu_count(),
            "load_average_1m_before_after": [load_before[0], load_after[0]],
            "python": platform.python_version(),
            "when": time.strftime("%Y-%m-%d %H:%M:%S"),
            "note": "tiny random-weights model: answers are noise; latencies are real. API overhead = client "
            "TTFT minus the agent's own TTFT for the same request.",
        },
    }
    write_results(result, args.out, "api", plot, table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
