"""One report over every benchmark's results: bench/results/report.md, and the README's section.

    python -m bench.report [--results bench/results] [--readme]

Reads the JSON each benchmark wrote (and `run.json` from `bench.run_all`: the machine, packages,
commit and each benchmark's status, time and load). Writes `report.md` next to them: a headline
table of the project's targets (met / missed / not measured), then one part per benchmark with
its table, its plot and the load it ran under. A benchmark that failed is a row with its error;
a figure measured while the 1-minute load average exceeded the cores when it started is flagged. `--readme`
rewrites the README between `<!-- bench:start -->` and `<!-- bench:end -->` from the same parts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config.settings import REPO_ROOT, CacheSettings

RESULTS = REPO_ROOT / "bench" / "results"
README = REPO_ROOT / "README.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
Json = dict[str, Any]
DEFAULT_GUARDS = tuple(CacheSettings().guards)
"""The semantic cache's checks by default (the cache benchmark's headline row)."""


@dataclass(frozen=True)
class Headline:
    """One target of the design brief, as measured."""

    figure: str
    measured: str
    target: str
    met: bool | None
    """None: no target to meet (or not measured)."""


@dataclass
class Part:
    """One benchmark's section of the report."""

    name: str
    title: str
    command: str
    table: str = ""
    headlines: list[Headline] = field(default_factory=list)
    status: str = "ok"
    error: str | None = None
    seconds: float | None = None
    load: tuple[float, float] | None = None
    cores: int | None = None
    plot: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def under_load(self) -> bool:
        """Other work was running: the load average before the benchmark exceeded the cores (the
        value after also counts the benchmark's own processes, so it is shown, not judged)."""
        return self.load is not None and self.cores is not None and self.load[0] > self.cores


def pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def verdict(met: bool | None) -> str:
    return {True: "met", False: "**missed**", None: "-"}[met]


def first_load(data: Json) -> tuple[float, float] | None:
    """The 1-minute load average before and after, from whichever key a benchmark used."""
    setup = data.get("setup", {})
    machine = data.get("machine", {}) if isinstance(data.get("machine"), dict) else {}
    run = data.get("run", {}).get("machine", {})
    candidates: list[Any] = [
        setup.get("load_average_1m_before_after"),
        data.get("load_average_1m_before_after"),
        machine.get("load_avg_before_after"),
        [machine.get("load_avg_1m_at_start"), machine.get("load_avg_1m_at_end")],
        [run.get("load_avg_1m"), run.get("load_avg_1m_at_end")],
        [_first(data.get("loadavg_before")), _first(data.get("loadavg_after_timings"))],
        [_first(machine.get("load_avg")), _first(machine.get("load_avg"))],
    ]
    for pair in candidates:
        if isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(v, int | float) for v in pair):
            return float(pair[0]), float(pair[1])
    return None


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list | tuple) and value else value


def cores_of(data: Json) -> int | None:
    for value in (
        data.get("setup", {}).get("cpus"),
        data.get("cpu_count"),
        data.get("machine", {}).get("cpus") if isinstance(data.get("machine"), dict) else None,
        data.get("machine", {}).get("cores") if isinstance(data.get("machine"), dict) else None,
        data.get("cpus"),
    ):
        if isinstance(value, int):
            return value
    return None


# --- one renderer per benchmark: (its JSON) -> part filled in --------------------------------


def render_serve(data: Json, part: Part) -> None:
    from bench.serve import table

    part.table = table(data)
    s = data["summary"]
    if s.get("batching_gain_16_vs_1") is not None:
        gain = s["batching_gain_16_vs_1"]
        part.headlines.append(Headline("batching: requests/s at 16 ÷ at 1", f"{gain:.1f}x", ">= 3x", gain >= 3))
    if s.get("ttft_share_p50_at_1") is not None:
        share = s["ttft_share_p50_at_1"]
        part.headlines.append(Headline("streaming: TTFT share of the full answer", pct(share), "<= 20 %", share <= 0.2))
    if "startup_s" in s:
        part.headlines.append(
            Headline("engine start-up to /health", f"{s['startup_s']:.0f} s", "<= 60 s", s["startup_s"] <= 60)
        )


def render_chains(data: Json, part: Part) -> None:
    from bench.chains import table

    part.table = table(data)
    cache, conv = data["cache"], data["conversation"]
    if cache.get("hits"):
        hit = cache["hit_ms_p50"]
        part.headlines.append(
            Headline("cache hit, full turn for a paraphrase, p50", f"{hit:.1f} ms", "<= 20 ms", hit <= 20)
        )
        ratio = cache["uncached_over_cached"]
        part.headlines.append(Headline("uncached ÷ cached turn, p50", f"{ratio:.0f}x", ">= 50x", ratio >= 50))
    overhead = data["single_turn"]["agent"]["overhead_ms_p50"]
    part.headlines.append(
        Headline(
            "orchestration overhead p50",
            f"{overhead:.1f} ms",
            f"<= {data['overhead_target_ms']:.1f} ms (30 + one embedding)",
            bool(data["overhead_target_met"]),
        )
    )
    rate = conv["prefix_hit_rate"]["agent"]
    part.headlines.append(Headline("vLLM prefix-cache hit rate over a conversation", pct(rate), ">= 50 %", rate >= 0.5))


def render_api(data: Json, part: Part) -> None:
    from bench.api import table

    part.table = table(data)
    single = [p for p in data["phases"] if p["concurrency"] == 1 and p["kind"] == "miss"]
    if single:
        overhead = single[0]["api_overhead_ms_p50"]
        part.headlines.append(Headline("API overhead p50, one client", f"{overhead:.1f} ms", "<= 5 ms", overhead <= 5))


def render_followups(data: Json, part: Part) -> None:
    from bench.followups import table

    part.table = table(data)
    part.notes.append("hit@5 on the report half of the conversations (rule thresholds tuned on the other half).")


def render_profiles(data: Json, part: Part) -> None:
    from bench.profiles import table

    part.table = table(data)
    w = data["workload"]
    part.notes.append(
        f"{len(w['conversations'])} concurrent conversations ({sum(map(len, w['conversations']))} turns) then "
        f"{len(w['repeats'])} repeated questions; answers of {w['max_tokens']} tokens; history budget "
        f"{w['history_token_budget']} tokens; answer F1 over {w['eval_limit']} questions. Device: {data['device']}."
    )
    dropped = sorted({n for row in data.get("needs_gpu", []) for n in row["needs_gpu"]})
    if dropped:
        part.notes.append("Not measurable here (needs GPU): " + "; ".join(dropped) + ".")
    tokens = {r["variant"]: r["workload"]["prompt_tokens_per_answer"] for r in data["variants"] if "workload" in r}
    reference, no_summary = tokens.get("low_latency"), tokens.get("low_latency, summary memory off")
    if reference is not None and reference == no_summary:
        part.notes.append(
            "Summary memory off sent the same prompt tokens as on: no conversation of this workload reached "
            "the history budget, so the summary never ran (a longer workload is needed to show it)."
        )
    if data.get("note"):
        part.notes.append(data["note"])


def render_ingest(data: Json, part: Part) -> None:
    ing, re_ing = data["ingest"], data["reingest_unchanged"]
    rows = [
        "| figure | measured | target |",
        "| --- | --- | --- |",
        f"| full ingest: {data['corpus']['files']} files, {ing['full_run']['chunks']} chunks | "
        f"{ing['full_run']['seconds']:.1f} s ({ing['full_run']['chunks_per_s']:.1f} chunks/s) | - |",
        f"| pipeline ÷ raw embedding of the same chunks | {pct(ing['pipeline_vs_raw'])} "
        f"({ing['pipeline_chunks_per_s']:.1f} vs {ing['raw_chunks_per_s']:.1f} chunks/s) | >= 85 % |",
        f"| unchanged re-ingest ÷ full ingest, in process / fresh CLI | {pct(re_ing['share_of_full'])} / "
        f"{pct(re_ing['cli_share_of_full'])} | <= 5 % |",
        f"| peak RSS during ingest | {data['peak_rss_after_ingest_mb']:.0f} MB | - |",
    ]
    for size, lat in data.get("latency", {}).items():
        modes = ", ".join(f"{m} {lat[m]['p50_ms']:.1f} / {lat[m]['p99_ms']:.1f}" for m in ("hybrid", "dense", "bm25"))
        rows.append(f"| retrieval p50 / p99 ms at {int(size):,} chunks (query embedding included) | {modes} | - |")
    part.table = "\n".join(rows)
    ratio = ing["pipeline_vs_raw"]
    part.headlines.append(Headline("ingestion: pipeline ÷ raw embedding", pct(ratio), ">= 85 %", ratio >= 0.85))
    share = re_ing["cli_share_of_full"]
    part.headlines.append(Headline("unchanged re-ingest (fresh CLI) ÷ full", pct(share), "<= 5 %", share <= 0.05))


def render_retrieval(data: Json, part: Part) -> None:
    metrics = ("hit@1", "hit@5", "hit@10", "mrr@10", "ndcg@10")
    rows = ["| retriever | " + " | ".join(metrics) + " |", "| --- |" + " ---: |" * len(metrics)]
    for name, values in data["results"].items():
        rows.append(f"| {name} | " + " | ".join(f"{values[m]:.3f}" for m in metrics) + " |")
    part.table = "\n".join(rows)
    part.notes.append(
        f"{data['dataset']}: {data['paragraphs']:,} paragraphs, {data['questions_evaluated']:,} of "
        f"{data['questions_total']:,} questions."
    )
    r = data["results"]
    hybrid, others = r["hybrid"]["ndcg@10"], max(r["dense"]["ndcg@10"], r["bm25"]["ndcg@10"])
    part.headlines.append(
        Headline(
            "retrieval nDCG@10: hybrid vs best of dense, BM25",
            f"{hybrid:.3f} vs {others:.3f}",
            "hybrid above both",
            hybrid > others,
        )
    )


def render_cache(data: Json, part: Part) -> None:
    rows = [
        "| checks after the cosine threshold (REPORT half) | paraphrase pairs: hit rate / wrong of hits "
        "| own paraphrases hit | near misses answered | hard pairs: duplicates answered / wrong of hits |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, r in data["chosen_on_report"].items():
        rows.append(
            f"| {name.replace('_', ' ')} | {pct(r['pairs_hit_rate'])} / {pct(r['pairs_wrong_share'])} "
            f"| {pct(r['own_paraphrase_hit_rate'])} | {r['negatives_answered']} of {r['asked'].get('negative', 0)} "
            f"| {pct(r['hard_duplicates_answered'])} / {pct(r['hard_wrong_share'])} |"
        )
    part.table = "\n".join(rows)
    chosen = data.get("chosen_on_tune")
    at = chosen["threshold"] if chosen else data["shipped"]["threshold"]
    part.notes.append(
        f"Threshold {at} ({'chosen on the TUNE half' if chosen else 'shipped; no threshold met the targets on TUNE'}); "
        f"{data['cached_questions']} cached questions; lookup p50 {data['latency']['hit']['p50_ms']:.1f} ms "
        "with the embedding."
    )
    shipped = data["shipped"]["report"]
    if tuple(data["shipped"]["guards"]) != DEFAULT_GUARDS and "four_guards" in data["chosen_on_report"]:
        shipped = data["chosen_on_report"]["four_guards"]
        part.notes.append(
            f"This run's shipped checks were {', '.join(data['shipped']['guards'])}; the headline shows the "
            f"row of today's default checks ({', '.join(DEFAULT_GUARDS)})."
        )
    hit, wrong = shipped["pairs_hit_rate"], shipped["pairs_wrong_share"]
    part.headlines.append(
        Headline(
            "cache precision, default checks (REPORT half): paraphrases hit / wrong of hits",
            f"{pct(hit)} / {pct(wrong)}",
            ">= 70 % / <= 2 %",
            hit >= 0.7 and wrong <= 0.02,
        )
    )
    dup, hard_wrong = shipped["hard_duplicates_answered"], shipped["hard_wrong_share"]
    part.headlines.append(
        Headline(
            "cache on hard negatives: duplicates answered / wrong of hits",
            f"{pct(dup)} / {pct(hard_wrong)}",
            ">= 30 % / <= 2 %",
            dup >= 0.3 and hard_wrong <= 0.02,
        )
    )


def render_cache_speed(data: Json, part: Part) -> None:
    rows = ["| operation | n | p50 | p99 |", "| --- | ---: | ---: | ---: |"]
    for name in ("hit", "miss", "store", "embedding_alone"):
        if name in data:
            d = data[name]
            rows.append(f"| {name.replace('_', ' ')} | {d['n']} | {d['p50_ms']:.1f} ms | {d['p99_ms']:.1f} ms |")
    part.table = "\n".join(rows)
    part.notes.append(f"{data['entries']:,} cached questions.")


def render_embeddings(data: Json, part: Part) -> None:
    backends = list(data["single_query"])
    rows = ["| | " + " | ".join(backends) + " |", "| --- |" + " --- |" * len(backends)]
    rows.append(
        "| one query p50 / p90 | "
        + " | ".join(
            f"{data['single_query'][b]['p50_ms']:.1f} / {data['single_query'][b]['p90_ms']:.1f} ms" for b in backends
        )
        + " |"
    )
    rows.append(
        "| batch of 64, sentences/s | "
        + " | ".join(f"{data['batch_64'][b]['sentences_per_s_median']:.1f}" for b in backends)
        + " |"
    )
    agree = data.get("agreement_with_torch", {})
    rows.append(
        "| min cosine with torch | "
        + " | ".join(f"{agree[b]['min_cosine']:.4f}" if b in agree else "-" for b in backends)
        + " |"
    )
    squad = data.get("dense_squad_subset")
    if squad:
        rows.append(
            f"| dense nDCG@10, {squad['paragraphs']} SQuAD paragraphs | "
            + " | ".join(f"{squad[b]['ndcg@10']:.4f}" if b in squad else "-" for b in backends)
            + " |"
        )
    part.table = "\n".join(rows)
    part.notes.append(f"Default backend: {data.get('default_backend', '?')}.")


def render_eval(data: Json, part: Part) -> None:
    summary = data["summary"]
    rows = ["| figure | value |", "| --- | ---: |"]
    for key, value in summary.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            text = f"{value:.3f}" if isinstance(value, float) and not math.isnan(value) else str(value)
            rows.append(f"| {key.replace('_', ' ')} | {text} |")
    part.table = "\n".join(rows)
    if isinstance(summary.get("f1"), int | float):
        part.headlines.append(Headline("answer token F1", f"{summary['f1']:.3f}", "-", None))
    model = data.get("model") or summary.get("model")
    if model:
        part.notes.append(f"Model: {model}.")


@dataclass(frozen=True)
class Spec:
    """Where a benchmark's results are and how they are shown."""

    name: str
    title: str
    command: str
    output: str
    render: Callable[[Json, Part], None]
    plot: str | None = None


SPECS = (
    Spec("serve", "Serving (vLLM)", "make bench-serve", "serve.json", render_serve, "serve.png"),
    Spec("ingest", "Ingestion", "make bench-ingest", "ingest.json", render_ingest, "ingest.png"),
    Spec("retrieval", "Retrieval quality", "make eval-retrieval", "retrieval.json", render_retrieval, "retrieval.png"),
    Spec(
        "cache",
        "Semantic cache precision",
        "make bench-cache",
        "cache_precision.json",
        render_cache,
        "cache_precision.png",
    ),
    Spec("cache-speed", "Semantic cache speed", "python -m bench.cache_speed", "cache_speed.json", render_cache_speed),
    Spec("embed", "Embedding backends", "make bench-embed", "embeddings.json", render_embeddings, "embeddings.png"),
    Spec("chains", "Chains: agent vs plain chain", "make bench-chains", "chains.json", render_chains, "chains.png"),
    Spec("api", "HTTP API under load", "make bench-api", "api.json", render_api, "api.png"),
    Spec(
        "followups", "Follow-up rewrites", "make bench-followups", "followups.json", render_followups, "followups.png"
    ),
    Spec("eval", "Answer quality", "python -m bench.answer_eval", "answer_eval.json", render_eval),
    Spec(
        "profiles", "Profile comparison", "python -m bench.profiles", "profiles.json", render_profiles, "profiles.png"
    ),
)


def build_parts(results: Path, fallback: Path | None = None) -> tuple[list[Part], Json | None]:
    """Every benchmark's part from `results`, with `run.json`'s statuses where a runner wrote one.
    A benchmark with no results there is taken from `fallback` (another run's folder), labelled so."""
    parts, run = _parts(results)
    if fallback is None or not fallback.is_dir() or fallback.resolve() == results.resolve():
        return parts, run
    others, other_run = _parts(fallback)
    by_name = {p.name: p for p in others if p.status == "ok"}
    origin = "QUICK run" if (other_run or {}).get("quick") else "run"
    when = (other_run or {}).get("machine", {}).get("when")
    for i, part in enumerate(parts):
        if part.status == "not run" and part.name in by_name:
            other = by_name[part.name]
            other.title += f" (from the {origin} in {os.path.relpath(fallback, results)}/" + (
                f", {when})" if when else ")"
            )
            if other.plot:
                other.plot = f"{os.path.relpath(fallback, results)}/{other.plot}"
            parts[i] = other
    return parts, run


def _parts(results: Path) -> tuple[list[Part], Json | None]:
    run_file = results / "run.json"
    run: Json | None = json.loads(run_file.read_text(encoding="utf-8")) if run_file.exists() else None
    steps = {s["name"]: s for s in (run or {}).get("benchmarks", [])}
    cores = (run or {}).get("machine", {}).get("cpus")
    parts = []
    for spec in SPECS:
        step = steps.get(spec.name)
        command = (
            f"python {step['command']}".replace(f"{REPO_ROOT}/", "") if step and "command" in step else spec.command
        )
        part = Part(spec.name, spec.title, command)
        if run is not None and step is None:
            continue  # not selected in this run
        if step is not None:
            part.seconds = step.get("seconds")
            if "load_avg_1m_before" in step:
                part.load = (step["load_avg_1m_before"], step["load_avg_1m_after"])
            if step["status"] != "ok":
                status = "skipped" if step["status"] == "skipped" else "failed"
                part.status, part.error, part.cores = status, step.get("error") or status, cores
                parts.append(part)
                continue
        path = results / spec.output
        if not path.exists():
            part.status, part.error = "not run", f"no {spec.output} in {shown(results)}"
            parts.append(part)
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            spec.render(data, part)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            part.status, part.error = "failed", f"unreadable {spec.output}: {type(exc).__name__}: {exc}"
            parts.append(part)
            continue
        part.load = part.load or first_load(data)
        part.cores = cores or cores_of(data) or os.cpu_count()
        if spec.plot and (results / spec.plot).exists():
            part.plot = spec.plot
        parts.append(part)
    return parts, run


def shown(path: Path) -> str:
    """A path as the report shows it: relative to the repository when inside it."""
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def load_text(part: Part) -> str:
    if part.load is None:
        return "load not recorded"
    text = f"load average {part.load[0]:.1f} before / {part.load[1]:.1f} after on {part.cores} cores"
    return f"**measured under load** ({text})" if part.under_load else text


def status_table(parts: Sequence[Part]) -> str:
    rows = ["| benchmark | status | time | load (1-min, before / after) |", "| --- | --- | ---: | --- |"]
    for p in parts:
        status = p.status if p.error is None else f"**{p.status}**: {one_line(last_line(p.error))}"
        seconds = f"{p.seconds:.0f} s" if p.seconds is not None else "-"
        rows.append(f"| {p.name} | {status} | {seconds} | {load_text(p)} |")
    return "\n".join(rows)


def last_line(text: str) -> str:
    """The line of an error that says what it was (a traceback's last)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text


def one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).replace("|", "\\|").strip()[:400]


def headline_table(parts: Sequence[Part]) -> str:
    rows = ["| figure | measured | target | verdict | benchmark |", "| --- | --- | --- | --- | --- |"]
    for p in parts:
        if p.status != "ok":
            rows.append(f"| {p.title} | {p.status} | - | not measured | {p.name} |")
            continue
        flag = " (under load)" if p.under_load else ""
        for h in p.headlines:
            rows.append(f"| {h.figure} | {h.measured}{flag} | {h.target} | {verdict(h.met)} | {p.name} |")
    return "\n".join(rows)


def run_summary(run: Json | None) -> list[str]:
    if run is None:
        return [
            "Assembled from the results each benchmark last wrote on its own (no `bench.run_all` record here): "
            "the machine, packages and commit are as each benchmark recorded them, if at all."
        ]
    m = run["machine"]
    gpu = ", ".join(m.get("gpus") or []) or "none"
    app = run["packages"]["app"]
    engine = run["packages"]["engine"]
    versions = ", ".join(f"{k} {v}" for k, v in {**app, **{f"engine {k}": v for k, v in engine.items()}}.items() if v)
    load = f"{m['load_avg_1m']} at start, {m.get('load_avg_1m_at_end', '?')} at the end"
    mode = "QUICK (fewer repetitions and questions: a smoke run, not figures to quote)" if run["quick"] else "full"
    kept = [
        f"{r['name']} ({r['kept_from_run_of']}, `{r.get('git_commit')}`)"
        for r in run["benchmarks"]
        if "kept_from_run_of" in r
    ]
    return [
        f"Run: {mode}, {m['when']}, {run['seconds'] / 60:.1f} min (the benchmarks: "
        f"{sum(r.get('seconds') or 0 for r in run['benchmarks']) / 60:.1f} min), commit `{run.get('git_commit')}`"
        + (f"; kept from an earlier run of the same folder: {', '.join(kept)}." if kept else "."),
        f"Machine: {m['cpu']}, {m['cpus']} cores, {m['memory_gib']} GiB, GPU: {gpu}; load average {load}.",
        f"Packages: {versions}.",
    ]


def render_report(parts: Sequence[Part], run: Json | None) -> str:
    lines = ["# Benchmark report", "", *run_summary(run), ""]
    lines += ["## Headline: the design targets", "", headline_table(parts), ""]
    lines += ["## What ran", "", status_table(parts), ""]
    for p in parts:
        lines += [
            f"## {p.title}",
            "",
            f"`{p.command}` — {load_text(p)}" + (f", {p.seconds:.0f} s" if p.seconds else ""),
            "",
        ]
        if p.status != "ok":
            lines += [f"**{p.status}**:", "", "```", (p.error or "").strip(), "```", ""]
            continue
        lines += [p.table, ""]
        lines += [*p.notes, ""] if p.notes else []
        if p.plot:
            lines += [f"![{p.title}]({p.plot})", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(results: Path, fallback: Path | None = None) -> Path:
    parts, run = build_parts(results, fallback)
    path = results / "report.md"
    path.write_text(render_report(parts, run), encoding="utf-8")
    return path


def readme_section(parts: Sequence[Part], run: Json | None, report_link: str) -> str:
    """The README's generated block: headline on top, one table per part, the link to the report."""
    lines = [
        f"Generated by `python -m bench.report --readme` from [{report_link}]({report_link}) (plots and raw JSON "
        "beside it); do not edit by hand.",
        "",
        *run_summary(run),
        "",
        "**Headline: the design targets**",
        "",
        headline_table(parts),
        "",
    ]
    for p in parts:
        lines += [f"**{p.title}** (`{p.command}`; {load_text(p)})", ""]
        lines += [p.table if p.status == "ok" else f"{p.status}: {one_line(last_line(p.error or ''))}", ""]
    return "\n".join(lines).rstrip()


def rewrite_readme(readme: Path, section: str) -> None:
    text = readme.read_text(encoding="utf-8")
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise ValueError(f"{readme} needs exactly one {START} followed by one {END}")
    head, rest = text.split(START)
    _, tail = rest.split(END)
    readme.write_text(f"{head}{START}\n{section}\n{END}{tail}", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the benchmarks' JSON")
    parser.add_argument("--readme", action="store_true", help="also rewrite the README's generated section")
    parser.add_argument("--readme-path", type=Path, default=README)
    parser.add_argument(
        "--fallback", type=Path, default=None, help="take benchmarks without results from this run's folder"
    )
    args = parser.parse_args(argv)
    results = args.results.resolve()
    if not results.is_dir():
        parser.error(f"no results folder {results}")
    path = write_report(results, args.fallback)
    print(f"wrote {path}")
    if args.readme:
        parts, run = build_parts(results, args.fallback)
        readme = args.readme_path.resolve()
        link = os.path.relpath(path, readme.parent)
        try:
            rewrite_readme(readme, readme_section(parts, run, link))
        except ValueError as exc:
            parser.error(str(exc))
        print(f"rewrote the benchmark section of {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
