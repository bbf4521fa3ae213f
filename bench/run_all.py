"""Every benchmark in one go, then one report: `make bench` (`QUICK=1`: `--quick`).

    python -m bench.run_all [--quick] [--only serve chains ...] [--port 8241]

Runs each benchmark as its own process (a crash or a missing data file fails that benchmark, not
the run), in this order: the ones without a chat model (ingest, retrieval, cache, cache-speed,
embed), then the ones with one (serve, chains, api, followups, eval), then the profile comparison
(`bench.profiles`, its own engines). In quick mode the chat-model benchmarks share one vLLM
engine started here (cpu profile on a machine without a GPU); in a full run each starts the
engine it is written for, and `eval` gets one started here. Never two engines at once.

Quick mode is passed to every benchmark as `RAG_BENCH_QUICK=1` (bench.common); results go to
bench/results/quick/ so a quick run never replaces a full run's figures. Each benchmark's log is
in <out>/logs/; `run.json` records the machine, packages, commit, and per benchmark its status,
time and load before/after (`--only` re-runs some and keeps the others' records of the last run
in that folder); `bench.report` then writes <out>/report.md. A benchmark past `--timeout` is
interrupted (it stops its engines) and fails. Without ../shared/data the SQuAD-based benchmarks
run on the subset shipped in data/squad/ and the ones that need the GPTCache pairs are skipped
(shown as such in the report). Exit status 0 unless a benchmark failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import QUICK_ENV, parse_args, run_record
from bench.squad import SHIPPED_SUBSET
from config.settings import REPO_ROOT

log = logging.getLogger("bench.run_all")
RESULTS = REPO_ROOT / "bench" / "results"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
STOP_GRACE_S = 120
"""Seconds a benchmark past its time gets to stop its engines after an interrupt."""
ERROR_LINES = 6
"""Lines of a failed benchmark's output kept as its error in the report."""


@dataclass(frozen=True)
class Step:
    """One benchmark: its module, arguments, the JSON it must write, whether it talks to a chat model."""

    name: str
    module: str
    args: tuple[str, ...]
    output: str
    chat_model: bool = False
    owns_engine_in_full_run: bool = False
    needs: tuple[Path, ...] = ()
    """Data files outside the repository it reads; without them it is skipped, not failed."""


def steps(out: Path, squad: Path, pairs: Path, *, quick: bool, eval_limit: int, port: int) -> list[Step]:
    o = str(out)
    return [
        Step("ingest", "bench.ingest", ("--out", o), "ingest.json"),
        Step("retrieval", "bench.retrieval_eval", ("--squad", str(squad), "--out", o), "retrieval.json"),
        Step(
            "cache",
            "bench.cache_precision",
            (str(pairs), "--out", str(out / "cache_precision")),
            "cache_precision.json",
            needs=(pairs,),
        ),
        Step(
            "cache-speed",
            "bench.cache_speed",
            ("--squad", str(squad), "--out", str(out / "cache_speed.json")),
            "cache_speed.json",
        ),
        Step(
            "embed",
            "bench.embeddings",
            ("--pairs", str(pairs), *(() if quick else ("--squad", str(squad))), "--out", o),
            "embeddings.json",
            needs=(pairs,),
        ),
        Step("serve", "bench.serve", ("--out", o), "serve.json", chat_model=True, owns_engine_in_full_run=True),
        Step("chains", "bench.chains", ("--squad", str(squad), "--out", o), "chains.json", True, True),
        Step("api", "bench.api", ("--out", o), "api.json", True, True),
        Step("followups", "bench.followups", ("--out", o), "followups.json", True, True),
        Step(
            "eval",
            "bench.answer_eval",
            ("--limit", str(eval_limit), "--out", str(out / "answer_eval.json")),
            "answer_eval.json",
            chat_model=True,
        ),
        Step("profiles", "bench.profiles", ("--port", str(port), "--out", o), "profiles.json"),
    ]


def shares_engine(step: Step, quick: bool) -> bool:
    """Does this step run against the engine started here (else: none, or its own)?"""
    return step.chat_model and (quick or not step.owns_engine_in_full_run)


def error_tail(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines[-ERROR_LINES:]) or "no output"


def stop(child: subprocess.Popen[bytes]) -> None:
    """Interrupt a benchmark like Ctrl-C, so it stops the engines it started (they run in process
    groups of their own and would outlive a killed parent); kill it only if it does not end."""
    child.send_signal(signal.SIGINT)
    try:
        child.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def run_step(step: Step, out: Path, quick: bool, base_url: str | None, timeout_s: float) -> dict[str, Any]:
    """Run one benchmark; its record, failed when it exits non-zero, times out or writes no JSON."""
    argv = [sys.executable, "-m", step.module, *step.args]
    if base_url and step.name != "eval":
        argv += ["--base-url", base_url]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), QUICK_ENV: "1" if quick else "0"}
    if base_url:
        env["RAG_LLM__BASE_URL"] = base_url  # for bench.answer_eval, which reads the settings
    output = out / step.output
    before = output.stat().st_mtime if output.exists() else None
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "name": step.name,
        "command": " ".join(argv[1:]),
        "load_avg_1m_before": os.getloadavg()[0],
    }
    started = time.monotonic()
    log.info("%s: %s", step.name, record["command"])
    with (logs / f"{step.name}.log").open("w", encoding="utf-8") as sink:
        child = subprocess.Popen(argv, env=env, cwd=REPO_ROOT, stdout=sink, stderr=subprocess.STDOUT)
        try:
            code: int | None = child.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            code = None
            stop(child)
    record["seconds"] = round(time.monotonic() - started, 1)
    record["load_avg_1m_after"] = os.getloadavg()[0]
    text = (logs / f"{step.name}.log").read_text(encoding="utf-8", errors="replace")
    wrote = output.exists() and (before is None or output.stat().st_mtime > before)
    if code is None:
        record.update(status="failed", error=f"timed out after {timeout_s:.0f} s\n{error_tail(text)}")
    elif code != 0:
        record.update(status="failed", returncode=code, error=error_tail(text))
    elif not wrote:
        record.update(status="failed", returncode=code, error=f"exited 0 but wrote no {step.output}")
    else:
        record.update(status="ok", returncode=code, output=step.output)
    log.info("%s: %s in %.0f s", step.name, record["status"], record["seconds"])
    return record


@contextlib.contextmanager
def shared_engine(port: int) -> Iterator[str]:
    """The engine the chat-model benchmarks share: the cpu profile without a GPU (balanced with
    one), contexts long enough for bench.chains' conversations."""
    from config import load_settings
    from serving.command import resolve_device
    from serving.launch import EngineServer
    from serving.tiny_model import DEFAULT_DIR, build_tiny_model

    profile = "balanced" if resolve_device("auto") == "cuda" else "cpu"
    settings = load_settings(
        profile, serving={"port": port, "max_model_len": 4096, "max_num_batched_tokens": 4096, "startup_timeout_s": 900}
    )
    if settings.serving.model == "models/tiny-chat":
        build_tiny_model(DEFAULT_DIR)
    with EngineServer(settings.serving, log_path=settings.serving.run_dir / "bench-run-all-engine.log") as server:
        yield server.base_url


def run(selected: Sequence[Step], out: Path, quick: bool, port: int, timeout_s: float) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    with contextlib.ExitStack() as engine:
        base_url: str | None = None
        engine_error: str | None = None
        for step in selected:
            missing = [str(path) for path in step.needs if not path.is_file()]
            if missing:
                reason = f"needs {', '.join(missing)} (public data kept outside the repository: ../shared/data)"
                log.warning("%s: skipped, %s", step.name, reason)
                records.append({"name": step.name, "status": "skipped", "error": reason, "seconds": 0.0})
                continue
            if not shares_engine(step, quick):
                engine.close()  # one engine at a time: this step needs none or starts its own
                base_url = None
            elif base_url is None and engine_error is None:
                try:
                    base_url = engine.enter_context(shared_engine(port))
                except Exception as exc:  # every step that needed it fails with this error
                    engine_error = f"the shared engine did not start: {type(exc).__name__}: {exc}"
            if shares_engine(step, quick) and base_url is None:
                records.append({"name": step.name, "status": "failed", "error": engine_error, "seconds": 0.0})
                continue
            records.append(run_step(step, out, quick, base_url if shares_engine(step, quick) else None, timeout_s))
    return records


def kept_records(run_file: Path, only: Sequence[str] | None, quick: bool) -> list[dict[str, Any]]:
    """With `--only`, the other benchmarks' records of the last run of the same mode in the folder
    stay in run.json (each with its own time and commit), so the report still covers them."""
    if only is None or not run_file.exists():
        return []
    previous = json.loads(run_file.read_text(encoding="utf-8"))
    if previous.get("quick") != quick:
        return []
    kept: list[dict[str, Any]] = []
    for r in previous.get("benchmarks", []):
        if r["name"] not in only:
            kept.append({**r, "kept_from_run_of": r.get("kept_from_run_of") or previous["machine"]["when"]})
            kept[-1].setdefault("git_commit", previous.get("git_commit"))
    return kept


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", default=None, help="benchmark names to run (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: bench/results[/quick])")
    parser.add_argument("--squad", type=Path, default=SHARED_DATA / "squad-dev-v1.1.json")
    parser.add_argument("--pairs", type=Path, default=SHARED_DATA / "cache_pairs.json")
    parser.add_argument("--port", type=int, default=8241, help="port of the engine the chat benchmarks share")
    parser.add_argument("--eval-limit", type=int, default=200, help="questions for bench.answer_eval")
    parser.add_argument("--timeout", type=float, default=4 * 3600, help="seconds one benchmark may take")
    args = parse_args(parser, argv, quick={"eval_limit": 20, "timeout": 900.0})
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out: Path = (args.out or (RESULTS / "quick" if args.quick else RESULTS)).resolve()
    if not args.squad.is_file():
        log.warning("%s not found: the SQuAD-based benchmarks use the shipped subset %s", args.squad, SHIPPED_SUBSET)
        args.squad = SHIPPED_SUBSET
    everything = steps(out, args.squad, args.pairs, quick=args.quick, eval_limit=args.eval_limit, port=args.port)
    names = [s.name for s in everything]
    unknown = sorted(set(args.only or []) - set(names))
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; the benchmarks: {', '.join(names)}")
    selected = [s for s in everything if args.only is None or s.name in args.only]
    out.mkdir(parents=True, exist_ok=True)
    kept = kept_records(out / "run.json", args.only, args.quick)
    record = run_record()
    started = time.monotonic()
    records = run(selected, out, args.quick, args.port, args.timeout)
    for r in records:
        r["git_commit"] = record["git_commit"]
    record["machine"]["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    run_json = {
        "quick": args.quick,
        "seconds": round(time.monotonic() - started, 1),
        **record,
        "benchmarks": sorted(kept + records, key=lambda r: names.index(r["name"])),
    }
    (out / "run.json").write_text(json.dumps(run_json, indent=2) + "\n", encoding="utf-8")
    from bench.report import write_report

    report = write_report(out)
    failed = [r["name"] for r in run_json["benchmarks"] if r["status"] == "failed"]
    skipped = [r["name"] for r in run_json["benchmarks"] if r["status"] == "skipped"]
    ran = len(run_json["benchmarks"]) - len(failed) - len(skipped)
    print(
        f"wrote {report}; {ran} of {len(run_json['benchmarks'])} benchmarks ran"
        + (f", failed: {', '.join(failed)}" if failed else "")
        + (f", skipped for missing data: {', '.join(skipped)}" if skipped else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
