"""Soak benchmark: many streaming clients against the RAG API for a long while, with one engine restart.

    python -m bench.soak [--clients 32] [--duration 600] [--restart-at SECONDS]

Starts a vLLM CPU engine on the tiny model and the API (`python -m app.api`, its own process)
over an index of the sample documents, fills the semantic cache with a few questions, then runs
`--clients` concurrent streaming clients for `--duration` seconds. Each turn is, at random, a
cached question (asked verbatim again) or an uncached one (it carries a number never asked before,
so the cache's number guard makes it a miss). At `--restart-at` (default: half-way) the engine is
stopped and started again on the same port; the restart window runs from the stop until the
engine is healthy again plus a short grace. Reported: turns served, errors inside and outside the
window (target outside: 0), latency and TTFT p50/p95 by kind outside the window, what was served
during it, and the API process's RSS and open file descriptors sampled every few seconds, with
their least-squares slope (a leak shows as a steady slope, not as one step).
Results: bench/results/soak.json, soak.png.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import os
import random
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.api import API_KEY, HIT_QUESTIONS, rss_mb, sample_index, start_api, wait_ready, warm_up
from bench.common import machine, write_results
from config.settings import REPO_ROOT

log = logging.getLogger("bench.soak")

RESULTS = REPO_ROOT / "bench" / "results"
DEFAULT_WORKDIR = REPO_ROOT / ".run" / "bench-soak"
SAMPLE_EVERY_S = 5.0
RESTART_GRACE_S = 10.0
"""After the restarted engine is healthy, the API's engine probe and client retries settle within this."""
AFTER_RESTART_S = 60.0
"""The load runs at least this long after the restart window, however long the engine took to start."""


@dataclass
class Turn:
    kind: str
    started: float
    ended: float
    ttft_s: float | None
    error: str | None
    cached: bool
    retrieval_only: bool
    """Answered without the model (the API's fallback while the engine is unreachable): served, degraded."""


@dataclass
class Soak:
    t0: float
    turns: list[Turn] = field(default_factory=list)
    samples: list[dict[str, float]] = field(default_factory=list)
    window: list[float] = field(default_factory=list)
    """[engine stopped, engine healthy again] in seconds since t0."""
    restart_error: str | None = None

    def load_ends_at(self, duration_s: float) -> float:
        """Seconds since t0 when clients stop: `duration_s`, stretched while the engine restarts and
        until AFTER_RESTART_S past the window, so traffic after the restart is always measured."""
        if len(self.window) == 1 and self.restart_error is None:
            return float("inf")
        if len(self.window) == 2:
            return max(duration_s, self.window[1] + RESTART_GRACE_S + AFTER_RESTART_S)
        return duration_s


async def one_turn(client: httpx.AsyncClient, kind: str, question: str, t0: float) -> Turn:
    """One streamed turn; any failure (HTTP status, an error event, no final chunk) becomes its error."""
    body = {"messages": [{"role": "user", "content": question}], "stream": True, "use_cache": True}
    started = time.perf_counter()
    first: float | None = None
    final: dict[str, Any] | None = None
    error: str | None = None
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                error = f"HTTP {response.status_code}: {(await response.aread())[:160]!r}"
            else:
                async for line in response.aiter_lines():
                    if not line.startswith("data: {"):
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        error = f"error event: {str(chunk['error'].get('message'))[:160]}"
                        break
                    if first is None and chunk["choices"][0]["delta"].get("content"):
                        first = time.perf_counter()
                    if chunk["choices"][0].get("finish_reason"):
                        final = chunk
                if error is None and final is None:
                    error = "stream ended without its final chunk"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {str(exc)[:160]}"
    ended = time.perf_counter()
    return Turn(
        kind=kind,
        started=started - t0,
        ended=ended - t0,
        ttft_s=None if first is None else first - started,
        error=error,
        cached=bool(final and final.get("cached")),
        retrieval_only=bool(final and final.get("retrieval_only")),
    )


async def run_clients(url: str, soak: Soak, clients: int, duration_s: float) -> None:
    numbers = itertools.count(1_000_000)
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=url, limits=limits, headers=headers, timeout=300) as client:

        async def worker(seed: int) -> None:
            rng = random.Random(seed)
            while time.perf_counter() - soak.t0 < soak.load_ends_at(duration_s):
                if rng.random() < 0.5:
                    turn = await one_turn(client, "cached", rng.choice(HIT_QUESTIONS), soak.t0)
                else:
                    question = f"How do I set option {next(numbers)} when ingesting?"
                    turn = await one_turn(client, "uncached", question, soak.t0)
                soak.turns.append(turn)
                if turn.error:
                    await asyncio.sleep(0.5)  # a failing client backs off instead of spinning

        await asyncio.gather(*(worker(i) for i in range(clients)))


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def sample_process(pid: int, soak: Soak, stop: threading.Event) -> None:
    """RSS (MB) and open fds of the API process every SAMPLE_EVERY_S seconds until `stop`."""
    while not stop.is_set():
        soak.samples.append({"t_s": time.perf_counter() - soak.t0, "rss_mb": rss_mb(pid), "fds": float(open_fds(pid))})
        stop.wait(SAMPLE_EVERY_S)


def restart_engine(server: Any, soak: Soak, at_s: float, stop: threading.Event) -> None:
    """Stop the engine at `at_s` and start it again on the same port; record the window."""
    if stop.wait(max(0.0, soak.t0 + at_s - time.perf_counter())):
        return
    log.info("restarting the engine")
    soak.window.append(time.perf_counter() - soak.t0)
    server.stop()
    try:
        server.start()
    except Exception as exc:  # reported in the results; the load then ends on time
        soak.restart_error = str(exc)[:300]
        log.error("the engine did not come back: %s", exc)
        return
    soak.window.append(time.perf_counter() - soak.t0)
    log.info("engine back after %.0f s", soak.window[1] - soak.window[0])
    # The engine gets SIGTERM when the thread that started it ends (PR_SET_PDEATHSIG is per thread):
    # this thread lives until the load is over.
    stop.wait()


def slope_per_min(samples: list[dict[str, float]], key: str) -> float | None:
    """Least-squares slope of `key` over time, per minute."""
    if len(samples) < 3:
        return None
    t = np.array([s["t_s"] for s in samples]) / 60
    return float(np.polyfit(t, np.array([s[key] for s in samples]), 1)[0])


def _ms(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q) * 1000) if values else None


def summarize(soak: Soak, load_s: float) -> dict[str, Any]:
    """Figures over `load_s` seconds of load; the window is open-ended when the engine never came back."""
    lo = soak.window[0] if soak.window else float("inf")
    hi = soak.window[1] + RESTART_GRACE_S if len(soak.window) == 2 else float("inf")

    def inside(turn: Turn) -> bool:
        return turn.ended >= lo and turn.started <= hi

    outside = [t for t in soak.turns if not inside(t)]
    during = [t for t in soak.turns if inside(t)]
    kinds: dict[str, Any] = {}
    for kind in ("cached", "uncached"):
        ok = [t for t in outside if t.kind == kind and t.error is None]
        kinds[kind] = {
            "served": len(ok),
            "served_from_cache": sum(t.cached for t in ok) / len(ok) if ok else 0.0,
            "latency_ms_p50": _ms([t.ended - t.started for t in ok], 50),
            "latency_ms_p95": _ms([t.ended - t.started for t in ok], 95),
            "ttft_ms_p50": _ms([t.ttft_s for t in ok if t.ttft_s is not None], 50),
            "ttft_ms_p95": _ms([t.ttft_s for t in ok if t.ttft_s is not None], 95),
        }
    errors_out = [t for t in outside if t.error]
    errors_in = [t for t in during if t.error]
    degraded_out = sum(t.error is None and t.retrieval_only for t in outside)
    degraded_in = sum(t.error is None and t.retrieval_only for t in during)
    half = [s for s in soak.samples if s["t_s"] >= load_s / 2]
    return {
        "turns": len(soak.turns),
        "served": sum(t.error is None for t in soak.turns),
        "outside_window": {
            "turns": len(outside),
            "errors": len(errors_out),
            "retrieval_only": degraded_out,
            "error_samples": sorted({t.error for t in errors_out if t.error})[:5],
            "latency_ms_p95_all": _ms([t.ended - t.started for t in outside if t.error is None], 95),
            **kinds,
        },
        "restart_window": {
            "from_s": lo if soak.window else None,
            "to_s": hi if len(soak.window) == 2 else None,
            "restart_error": soak.restart_error,
            "engine_down_s": soak.window[1] - soak.window[0] if len(soak.window) == 2 else None,
            "turns": len(during),
            "errors": len(errors_in),
            "retrieval_only": degraded_in,
            "served_cached": sum(t.error is None and t.kind == "cached" for t in during),
            "served_uncached": sum(t.error is None and t.kind == "uncached" for t in during),
            "error_samples": sorted({t.error for t in errors_in if t.error})[:5],
        },
        "api_process": {
            "rss_mb_start": soak.samples[0]["rss_mb"] if soak.samples else None,
            "rss_mb_end": soak.samples[-1]["rss_mb"] if soak.samples else None,
            "fds_start": soak.samples[0]["fds"] if soak.samples else None,
            "fds_end": soak.samples[-1]["fds"] if soak.samples else None,
            "rss_mb_per_min": slope_per_min(soak.samples, "rss_mb"),
            "fds_per_min": slope_per_min(soak.samples, "fds"),
            "rss_mb_per_min_second_half": slope_per_min(half, "rss_mb"),
            "fds_per_min_second_half": slope_per_min(half, "fds"),
        },
    }


def timeline(soak: Soak, load_s: float, step_s: float = 5.0) -> list[dict[str, float]]:
    """Turns finished and failed per `step_s` bucket, by kind (for the plot; the raw turns are many)."""
    buckets = int(load_s // step_s) + 2
    rows = [{"t_s": i * step_s, "cached": 0.0, "uncached": 0.0, "errors": 0.0} for i in range(buckets)]
    for turn in soak.turns:
        row = rows[min(int(turn.ended // step_s), buckets - 1)]
        row["errors" if turn.error else turn.kind] += 1
    return rows


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    rows = result["timeline"]
    step = rows[1]["t_s"] - rows[0]["t_s"] if len(rows) > 1 else 1.0
    t = [r["t_s"] for r in rows]
    for key, color in (("cached", "tab:green"), ("uncached", "tab:blue"), ("errors", "tab:red")):
        axes[0].plot(t, [r[key] / step for r in rows], color=color, label=key)
    axes[0].set_title("Turns finished per second")
    samples = result["samples"]
    axes[1].plot([s["t_s"] for s in samples], [s["rss_mb"] for s in samples], color="tab:purple")
    axes[1].set_title(f"API RSS (MB); slope {result['summary']['api_process']['rss_mb_per_min']:.2f} MB/min")
    axes[2].plot([s["t_s"] for s in samples], [s["fds"] for s in samples], color="tab:brown")
    axes[2].set_title(f"API open fds; slope {result['summary']['api_process']['fds_per_min']:.2f} /min")
    window = result["summary"]["restart_window"]
    for ax in axes:
        if window["from_s"] is not None:
            right = window["to_s"] if window["to_s"] is not None else result["setup"]["load_s"]
            ax.axvspan(window["from_s"], right, color="gray", alpha=0.2, label="restart window")
        ax.set_xlabel("seconds")
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"Soak: {result['setup']['clients']} clients for {result['setup']['load_s']:.0f} s, "
        "one engine restart (tiny model, CPU)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(result: dict[str, Any]) -> str:
    """The Markdown table for the README."""
    s = result["summary"]
    out, win, api = s["outside_window"], s["restart_window"], s["api_process"]

    def fmt(value: float | None, spec: str = ".0f") -> str:
        return "-" if value is None else format(value, spec)

    rows = [
        "| traffic (outside the restart window) | turns served | latency p50 / p95 | TTFT p50 / p95 | from cache |",
        "| --- | --- | --- | --- | --- |",
    ]
    for kind in ("cached", "uncached"):
        k = out[kind]
        rows.append(
            f"| {kind} | {k['served']} | {fmt(k['latency_ms_p50'])} / {fmt(k['latency_ms_p95'])} ms | "
            f"{fmt(k['ttft_ms_p50'])} / {fmt(k['ttft_ms_p95'])} ms | {100 * k['served_from_cache']:.0f} % |"
        )
    load = result["setup"]["load_average_1m_before_after"]
    rows += [
        "",
        f"Turns: {s['turns']}, served {s['served']}. Errors outside the restart window: **{out['errors']}** "
        f"(of {out['turns']} turns; {out['retrieval_only']} answered retrieval-only; p95 latency of all served "
        f"turns {fmt(out['latency_ms_p95_all'])} ms). Restart window {fmt(win['from_s'])}-{fmt(win['to_s'])} s "
        f"(engine down {fmt(win['engine_down_s'])} s, +{RESTART_GRACE_S:.0f} s grace): {win['turns']} turns, "
        f"{win['errors']} errors, {win['served_cached']} cached and {win['served_uncached']} uncached turns served "
        f"({win['retrieval_only']} of them retrieval-only, the API's fallback while the engine is away)."
        + (f" The engine did not come back: {win['restart_error']}" if win["restart_error"] else ""),
        f"API process: RSS {fmt(api['rss_mb_start'])} -> {fmt(api['rss_mb_end'])} MB "
        f"(slope {fmt(api['rss_mb_per_min'], '.2f')} MB/min; "
        f"second half {fmt(api['rss_mb_per_min_second_half'], '.2f')}), "
        f"open fds {fmt(api['fds_start'])} -> {fmt(api['fds_end'])} "
        f"(slope {fmt(api['fds_per_min'], '.2f')}/min; second half {fmt(api['fds_per_min_second_half'], '.2f')}). "
        f"{result['setup']['cpus']} cores, 1-min load average {load[0]:.1f} before / {load[1]:.1f} after.",
    ]
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32, help="concurrent streaming clients")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--restart-at", type=float, help="seconds into the load to restart the engine (default: half)")
    parser.add_argument("--max-tokens", type=int, default=64, help="answer length (llm.max_tokens)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.clients < 1 or args.duration < 10:
        parser.error("--clients must be at least 1 and --duration at least 10 seconds")
    restart_at = args.duration / 2 if args.restart_at is None else args.restart_at
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # a loaded machine took minutes to start the engine
    work, settings, chunks = sample_index(args.workdir, args.max_tokens, startup_timeout_s=1200, request_timeout_s=120)
    from serving.launch import EngineServer, free_port

    settings.serving.port = free_port()
    settings.llm.base_url = f"http://127.0.0.1:{settings.serving.port}/v1"
    server = EngineServer(settings.serving, log_path=work / "engine.log").start()
    log.info("vLLM ready in %.0f s at %s", server.startup_s or 0, settings.llm.base_url)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    api = start_api(settings, work, port)
    stop = threading.Event()
    try:
        wait_ready(url, api)
        asyncio.run(warm_up(url))
        soak = Soak(t0=time.perf_counter())
        load_before = os.getloadavg()
        threads = [
            threading.Thread(target=sample_process, args=(api.pid, soak, stop), daemon=True),
            threading.Thread(target=restart_engine, args=(server, soak, restart_at, stop), daemon=True),
        ]
        for thread in threads:
            thread.start()
        log.info("%d clients for %.0f s; engine restart at %.0f s", args.clients, args.duration, restart_at)
        asyncio.run(run_clients(url, soak, args.clients, args.duration))
        load_s = time.perf_counter() - soak.t0
        load_after = os.getloadavg()
        raw = {"turns": [asdict(t) for t in soak.turns], "samples": soak.samples, "window": soak.window}
        (work / "soak-raw.json").write_text(json.dumps(raw), encoding="utf-8")  # kept if summarising fails
        stop.set()
        for thread in threads:
            thread.join()
    finally:
        stop.set()
        api.terminate()
        api.wait(timeout=60)
        server.stop()
    result = {
        "summary": summarize(soak, load_s),
        "samples": soak.samples,
        "timeline": timeline(soak, load_s),
        "setup": {
            **machine(),
            "clients": args.clients,
            "duration_s": args.duration,
            "load_s": load_s,
            "restart_at_s": restart_at,
            "restart_grace_s": RESTART_GRACE_S,
            "model": settings.serving.model,
            "profile": settings.profile,
            "max_tokens": settings.llm.max_tokens,
            "index_chunks": chunks,
            "load_average_1m_before_after": [load_before[0], load_after[0]],
            "note": "tiny random-weights model: answers are noise; latencies, errors and resources are real.",
        },
    }
    write_results(result, args.out, "soak", plot, table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
