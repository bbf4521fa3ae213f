"""Profile comparison: one RAG chat workload under each latency/throughput profile, and with the
cache, speculation, prefix caching and summary memory each switched off once.

    python -m bench.profiles [--quick] [--port 8240] [--eval-limit 20]

The workload: conversations of the follow-up set (bench/data/followups.json, over data/docs),
joined in pairs or threes into longer conversations that run concurrently through the real
`RagAgent`, then the first question of each asked again in a fresh conversation (repeat traffic,
which the cache may answer). Every variant gets the same questions, the same answer length
(`llm.max_tokens` fixed for all) and the same short history budget, so summaries happen within the
few turns. Per variant: TTFT p50/p95 over all turns (the agent's own, cache hits included),
generated tokens/s and requests/s over the wall time (vLLM /metrics), prompt tokens per
model-answered turn, cache hit rate, and answer F1 from `python -m bench.answer_eval` run against
the same engine with the same settings (as environment overrides).

Variants that change the engine get their own vLLM server (one at a time); the others share one.
Without a GPU every profile runs on the CPU build (`serving.device=cpu`): GPU-only settings
(fp8 KV cache, memory utilisation, quantization) are dropped and listed, and the figures of a
profile as configured for a GPU read "needs GPU". Results: bench/results/profiles.json and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.common import parse_args, run_record, write_results
from bench.metrics import percentile
from config import load_settings
from config.settings import REPO_ROOT, Settings

log = logging.getLogger("bench.profiles")
RESULTS = REPO_ROOT / "bench" / "results"
DEFAULT_SET = REPO_ROOT / "bench" / "data" / "followups.json"
DEFAULT_WORKDIR = REPO_ROOT / ".run" / "bench-profiles"
REFERENCE = "low_latency"
"""The profile the switches are turned off from: it has all four on."""
NO_SUMMARY_BUDGET = 65536
"""`chains.history_token_budget` at its upper bound: the summary never triggers."""
GENERATED = "vllm:generation_tokens_total"
CPU_COUNTERPART = "--gpu-memory-utilization"
"""A GPU-only flag with a CPU counterpart (the KV cache space), not a figure that needs a GPU."""
Overrides = Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True)
class Variant:
    """A profile, optionally with settings changed from it."""

    name: str
    profile: str
    overrides: Overrides = field(default_factory=dict)

    def engine_key(self) -> str:
        """Variants with equal keys can share one engine."""
        return json.dumps([self.profile, dict(self.overrides.get("serving", {}))], sort_keys=True)


VARIANTS = (
    Variant("low_latency", "low_latency"),
    Variant("balanced", "balanced"),
    Variant("high_throughput", "high_throughput"),
    Variant("low_latency, cache off", REFERENCE, {"cache": {"enabled": False}}),
    Variant("low_latency, speculation off", REFERENCE, {"serving": {"speculative_method": "off"}}),
    Variant("low_latency, prefix caching off", REFERENCE, {"serving": {"enable_prefix_caching": False}}),
    Variant("low_latency, summary memory off", REFERENCE, {"chains": {"history_token_budget": NO_SUMMARY_BUDGET}}),
)


@dataclass(frozen=True)
class Workload:
    """What every variant is asked."""

    conversations: list[list[str]]
    repeats: list[str]
    max_tokens: int
    history_token_budget: int


def load_workload(path: Path, conversations: int, join: int, max_tokens: int, history_budget: int) -> Workload:
    """`conversations` conversations, each `join` consecutive ones of the set run as one."""
    data = json.loads(path.read_text(encoding="utf-8"))["conversations"]
    needed = conversations * join
    if len(data) < needed:
        raise ValueError(f"{path} has {len(data)} conversations; {conversations} x {join} needed")
    parts = [[turn["question"] for turn in c["turns"]] for c in data[:needed]]
    joined = [[q for part in parts[i * join : (i + 1) * join] for q in part] for i in range(conversations)]
    return Workload(joined, [p[0] for p in parts], max_tokens, history_budget)


def slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name)


def variant_overrides(variant: Variant, work: Path, workload: Workload, device: str, port: int) -> dict[str, Any]:
    """Settings overrides for a variant: its own, then the workload's, and where its state lives."""
    name = slug(variant.name)
    own = {section: dict(values) for section, values in variant.overrides.items()}
    return {
        "serving": {"device": device, "port": port, "startup_timeout_s": 900, **own.get("serving", {})},
        "index": {"index_dir": work / "index", "docs_dir": REPO_ROOT / "data" / "docs"},
        "llm": {"max_tokens": workload.max_tokens, "request_timeout_s": 300, "base_url": f"http://127.0.0.1:{port}/v1"},
        "chains": {
            "history_token_budget": workload.history_token_budget,
            "conversations_db": work / f"conversations-{name}.sqlite",
            **own.get("chains", {}),
        },
        "cache": {"dir": work / f"cache-{name}", **own.get("cache", {})},
    }


def env_overrides(overrides: Overrides) -> dict[str, str]:
    """The same overrides as `RAG_SECTION__FIELD` variables, for a subprocess that loads settings."""
    env = {}
    for section, values in overrides.items():
        for key, value in values.items():
            text = json.dumps(value) if isinstance(value, bool | int | float | list) else str(value)
            env[f"RAG_{section.upper()}__{key.upper()}"] = text
    return env


def metric(base_url: str, name: str) -> float:
    text = httpx.get(base_url.removesuffix("/v1") + "/metrics", timeout=10).raise_for_status().text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.split("{")[0].split(" ")[0] == name)


async def run_workload(settings: Settings, workload: Workload) -> dict[str, Any]:
    """The conversations concurrently (turns of one in order), then the repeats concurrently."""
    from chains import RagAgent

    base_url = settings.llm.base_url or ""
    with RagAgent.from_settings(settings) as agent:
        agent.clear_cache()
        await agent.ainvoke("Warm-up: what is this project?", "warm-up", use_cache=False)

        async def conversation(cid: str, questions: list[str]) -> list[Any]:
            return [await agent.ainvoke(q, cid) for q in questions]

        generated_before = metric(base_url, GENERATED)
        started = time.perf_counter()
        runs = await asyncio.gather(*(conversation(f"c{i}", qs) for i, qs in enumerate(workload.conversations)))
        repeats = await asyncio.gather(*(agent.ainvoke(q, f"r{i}") for i, q in enumerate(workload.repeats)))
        wall = time.perf_counter() - started
        generated = metric(base_url, GENERATED) - generated_before
    turns = [r for run in runs for r in run] + list(repeats)
    errors = [r.error for r in turns if r.error]
    ttfts = [r.timings.ttft_s for r in turns if r.timings.ttft_s is not None]
    answered = [r for r in turns if not r.cached]
    return {
        "turns": len(turns),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "wall_s": wall,
        "ttft_p50_ms": 1000 * statistics.median(ttfts) if ttfts else float("nan"),
        "ttft_p95_ms": 1000 * percentile(ttfts, 95),
        "tokens_per_s": generated / wall,
        "requests_per_s": len(turns) / wall,
        "prompt_tokens_per_answer": statistics.fmean(r.tokens.prompt_tokens for r in answered) if answered else 0.0,
        "llm_calls_per_answer": statistics.fmean(r.tokens.llm_calls for r in answered) if answered else 0.0,
        "cache_hit_rate": sum(r.cached for r in turns) / len(turns),
    }


def answer_f1(variant: Variant, overrides: Overrides, base_url: str, limit: int, out: Path) -> dict[str, Any]:
    """`python -m bench.answer_eval --limit N --profile P --base-url URL --out F.json` against this
    variant's engine and settings; its summary, or the error that stopped it."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **env_overrides(overrides)}
    argv = [sys.executable, "-m", "bench.answer_eval", "--limit", str(limit), "--profile", variant.profile]
    argv += ["--base-url", base_url, "--workdir", str(out.parent / "answer-eval-index")]  # ingested once
    try:
        done = subprocess.run(
            [*argv, "--out", str(out)],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"error": "bench.answer_eval timed out after 1800 s"}
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"error": f"bench.answer_eval exited {done.returncode}: " + " | ".join(tail)}
    summary: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))["summary"]
    return summary


def run(
    variants: Sequence[Variant], workload: Workload, work: Path, port: int, eval_limit: int
) -> list[dict[str, Any]]:
    """Each engine once (in the order of first use), every variant it serves measured on it."""
    from serving.command import resolve_device
    from serving.launch import EngineServer
    from serving.tiny_model import DEFAULT_DIR, build_tiny_model

    device = resolve_device("auto")
    rows: dict[str, dict[str, Any]] = {}
    groups: dict[str, list[Variant]] = {}
    for variant in variants:
        groups.setdefault(variant.engine_key(), []).append(variant)
    ingested = False
    for members in groups.values():
        first = load_settings(members[0].profile, **variant_overrides(members[0], work, workload, device, port))
        if first.serving.model == "models/tiny-chat":
            build_tiny_model(DEFAULT_DIR)
        if not ingested:
            from indexing.pipeline import ingest

            ingest(first.index, [first.index.docs_dir], prune=True, progress=False)
            ingested = True
        server = EngineServer(first.serving, log_path=work / f"engine-{slug(members[0].name)}.log")
        engine: dict[str, Any] = {"command": server.command.shell(), "dropped_on_cpu": list(server.command.notes)}
        try:
            server.start()
            engine["startup_s"] = server.startup_s
            for variant in members:
                overrides = variant_overrides(variant, work, workload, device, port)
                settings = load_settings(variant.profile, **overrides)
                shutil.rmtree(settings.cache.dir, ignore_errors=True)
                settings.chains.conversations_db.unlink(missing_ok=True)
                log.info("variant %s", variant.name)
                load_before = os.getloadavg()[0]
                row: dict[str, Any] = {"variant": variant.name, "profile": variant.profile, "engine": engine}
                try:
                    row["workload"] = asyncio.run(run_workload(settings, workload))
                except Exception as exc:  # a failed variant is a row with its error, the others still run
                    row["error"] = f"{type(exc).__name__}: {exc}"
                row["answer_eval"] = answer_f1(
                    variant, overrides, str(settings.llm.base_url), eval_limit, work / f"answer-eval-{len(rows)}.json"
                )
                row["load_avg_1m_before_after"] = [load_before, os.getloadavg()[0]]
                row["overrides"] = {s: {k: str(v) for k, v in vals.items()} for s, vals in variant.overrides.items()}
                rows[variant.name] = row
        except Exception as exc:  # the engine did not start: every variant on it failed
            for variant in members:
                rows.setdefault(variant.name, {"variant": variant.name, "profile": variant.profile, "engine": engine})
                rows[variant.name].setdefault("error", f"engine: {type(exc).__name__}: {exc}")
        finally:
            server.stop()
    return [rows[v.name] for v in variants]


def gpu_only_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """A "needs GPU" row for each profile measured without settings it names for a GPU (other than
    the memory share, whose CPU counterpart `serving.cpu_kvcache_space_gb` every profile has)."""
    rows = []
    for r in results:
        dropped = [n for n in r.get("engine", {}).get("dropped_on_cpu", []) if CPU_COUNTERPART not in n]
        if r["variant"] == r["profile"] and dropped:
            rows.append({"variant": f"{r['profile']} as configured", "needs_gpu": dropped})
    return rows


def table(result: dict[str, Any]) -> str:
    """The comparison as Markdown (also used by bench.report)."""
    head = (
        "| variant | TTFT p50 / p95 (ms) | tokens/s | requests/s | prompt tokens per answer | cache hit rate "
        "| answer F1 |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    lines = [head]
    for row in result["variants"]:
        f1 = row.get("answer_eval", {})
        error = str(f1.get("error", "not run")).split(" | ")[-1].strip()  # the line that says what it was
        f1_text = f"{f1['f1']:.3f}" if "f1" in f1 else f"not measured ({error})"
        if "workload" not in row:
            lines.append(f"| {row['variant']} | failed: {row.get('error', 'no result')} | | | | | {f1_text} |")
            continue
        w = row["workload"]
        errors = f" ({w['errors']} of {w['turns']} turns failed)" if w["errors"] else ""
        lines.append(
            f"| {row['variant']}{errors} | {w['ttft_p50_ms']:.0f} / {w['ttft_p95_ms']:.0f} | {w['tokens_per_s']:.0f} "
            f"| {w['requests_per_s']:.2f} | {w['prompt_tokens_per_answer']:.0f} | {100 * w['cache_hit_rate']:.0f} % "
            f"| {f1_text} |"
        )
    for row in result.get("needs_gpu", []):
        lines.append(f"| {row['variant']} | needs GPU | needs GPU | needs GPU | needs GPU | needs GPU | needs GPU |")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["variants"] if "workload" in r]
    names = [r["variant"].replace(", ", "\n") for r in rows]
    panels = (
        ("ttft_p50_ms", "TTFT p50 (ms)"),
        ("requests_per_s", "requests/s"),
        ("prompt_tokens_per_answer", "prompt tokens per answer"),
        ("cache_hit_rate", "cache hit rate"),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.8))
    for ax, (key, title) in zip(axes, panels, strict=True):
        ax.barh(names, [r["workload"][key] for r in rows], color="tab:blue")
        ax.invert_yaxis()
        ax.set_title(title)
        ax.tick_params(axis="y", labelsize=7)
    m = result["run"]["machine"]
    fig.suptitle(f"Profiles on {result['device']} ({m['cpus']} cores, load {m['load_avg_1m']} at start)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profiles", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="engine port (default: a free one)")
    parser.add_argument("--set", type=Path, default=DEFAULT_SET, help="conversations (the follow-up set's JSON)")
    parser.add_argument("--conversations", type=int, default=8, help="concurrent conversations")
    parser.add_argument("--join", type=int, default=3, help="set conversations joined into one")
    parser.add_argument("--max-tokens", type=int, default=128, help="answer length, the same for every variant")
    parser.add_argument("--history-budget", type=int, default=384, help="chains.history_token_budget (all variants)")
    parser.add_argument("--eval-limit", type=int, default=100, help="questions for bench.answer_eval")
    parser.add_argument("--only", nargs="*", default=None, help="variant names to run (default: all)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--out", type=Path, default=RESULTS)
    quick = {"conversations": 4, "join": 2, "max_tokens": 48, "eval_limit": 10}
    args = parse_args(parser, argv, quick=quick)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("httpx", "chains", "chromadb", "gptcache"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    variants = [v for v in VARIANTS if args.only is None or v.name in args.only]
    if args.only is not None and len(variants) != len(args.only):
        parser.error(f"unknown variant in --only; the variants: {', '.join(v.name for v in VARIANTS)}")
    from serving.command import resolve_device
    from serving.launch import free_port

    workload = load_workload(args.set, args.conversations, args.join, args.max_tokens, args.history_budget)
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    record = run_record()
    results = run(variants, workload, work, args.port or free_port(), args.eval_limit)
    record["machine"]["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    result = {
        "benchmark": "profiles",
        "quick": args.quick,
        "device": resolve_device("auto"),
        "workload": {**asdict(workload), "set": str(args.set), "eval_limit": args.eval_limit},
        "variants": results,
        "needs_gpu": gpu_only_rows(results),
        "run": record,
        "note": "tiny random-weights model: answers are noise, so F1 is near 0 by construction; latencies, "
        "tokens and hit rates are real",
    }
    write_results(result, args.out, "profiles", plot, table(result))
    return 0 if all("workload" in r and not r["workload"]["errors"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
