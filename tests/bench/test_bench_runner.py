"""`make bench`'s runner and the shared quick mode, without servers: a benchmark that fails or
writes nothing is a failed record; quick defaults apply once, from one flag or variable; the
profile comparison's settings reach a subprocess's settings intact."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bench import profiles, run_all
from bench.common import QUICK_ENV, parse_args
from config import load_settings


def step(module: str, *args: str, output: str = "out.json") -> run_all.Step:
    return run_all.Step("probe", module, args, output)


def test_a_crashing_benchmark_is_a_failed_record_with_its_error(tmp_path: Path) -> None:
    record = run_all.run_step(step("bench.no_such_benchmark"), tmp_path, True, None, 60)
    assert record["status"] == "failed" and record["returncode"] == 1
    assert "No module named bench.no_such_benchmark" in record["error"]
    assert (tmp_path / "logs" / "probe.log").exists()


def test_a_benchmark_that_writes_no_results_failed(tmp_path: Path) -> None:
    record = run_all.run_step(step("json.tool", "--help"), tmp_path, True, None, 60)
    assert record["status"] == "failed"
    assert record["error"] == "exited 0 but wrote no out.json"


def test_a_benchmark_that_writes_its_results_ran(tmp_path: Path) -> None:
    record = run_all.run_step(
        step("bench.report", "--results", str(tmp_path), output="report.md"), tmp_path, True, None, 60
    )
    assert record["status"] == "ok" and record["output"] == "report.md"
    assert record["load_avg_1m_after"] >= 0


def test_a_benchmark_without_its_outside_data_is_skipped_not_failed(tmp_path: Path) -> None:
    missing = tmp_path / "shared" / "cache_pairs.json"
    needing = run_all.Step("cache", "bench.no_such_benchmark", (), "out.json", needs=(missing,))
    [record] = run_all.run([needing], tmp_path, True, 0, 60)
    assert record["status"] == "skipped" and str(missing) in record["error"]
    assert not (tmp_path / "logs" / "cache.log").exists()  # it was never started


def test_an_unknown_benchmark_name_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run_all.main(["--only", "serve", "sevre"])
    assert "unknown benchmark sevre" in capsys.readouterr().err


def test_quick_mode_replaces_defaults_and_explicit_arguments_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(QUICK_ENV, raising=False)

    def parsed(argv: list[str]) -> argparse.Namespace:
        parser = argparse.ArgumentParser()
        parser.add_argument("--rounds", type=int, default=12)
        return parse_args(parser, argv, quick={"rounds": 2})

    assert (parsed([]).rounds, parsed([]).quick) == (12, False)
    assert (parsed(["--quick"]).rounds, parsed(["--quick"]).quick) == (2, True)
    assert parsed(["--quick", "--rounds", "5"]).rounds == 5
    monkeypatch.setenv(QUICK_ENV, "1")
    assert (parsed([]).rounds, parsed([]).quick) == (2, True)
    monkeypatch.setenv(QUICK_ENV, "0")
    assert parsed([]).rounds == 12


def test_quick_runs_share_one_engine_full_runs_let_benchmarks_start_theirs() -> None:
    steps = {
        s.name: s for s in run_all.steps(Path("out"), Path("s.json"), Path("p.json"), quick=True, eval_limit=5, port=1)
    }
    assert [n for n, s in steps.items() if run_all.shares_engine(s, quick=True)] == [
        "serve",
        "chains",
        "api",
        "followups",
        "eval",
    ]
    assert [n for n, s in steps.items() if run_all.shares_engine(s, quick=False)] == ["eval"]


def test_variant_settings_reach_a_subprocess_through_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workload = profiles.Workload([["q"]], ["q"], max_tokens=48, history_token_budget=384)
    variant = next(v for v in profiles.VARIANTS if v.name == "low_latency, summary memory off")
    overrides = profiles.variant_overrides(variant, tmp_path, workload, "cpu", 8240)
    for name, value in profiles.env_overrides(overrides).items():
        monkeypatch.setenv(name, value)
    settings = load_settings(variant.profile)  # what bench.answer_eval --profile low_latency reads
    assert settings.chains.history_token_budget == profiles.NO_SUMMARY_BUDGET
    assert settings.llm.base_url == "http://127.0.0.1:8240/v1"
    assert (settings.llm.max_tokens, settings.serving.device, settings.serving.port) == (48, "cpu", 8240)
    assert settings.cache.enabled and settings.serving.speculative_method == "ngram"
    cache_off = next(v for v in profiles.VARIANTS if v.name == "low_latency, cache off")
    env = profiles.env_overrides(profiles.variant_overrides(cache_off, tmp_path, workload, "cpu", 8240))
    assert env["RAG_CACHE__ENABLED"] == "false"


def test_switches_share_the_reference_engine_unless_they_change_it() -> None:
    keys = {v.name: v.engine_key() for v in profiles.VARIANTS}
    assert keys["low_latency, cache off"] == keys["low_latency"] == keys["low_latency, summary memory off"]
    assert (
        len({keys["low_latency"], keys["low_latency, speculation off"], keys["low_latency, prefix caching off"]}) == 3
    )


def test_workload_joins_conversations_and_refuses_a_short_set(tmp_path: Path) -> None:
    conversations = [{"turns": [{"question": f"c{i} t{t}"} for t in range(2)]} for i in range(5)]
    path = tmp_path / "set.json"
    path.write_text(json.dumps({"conversations": conversations}), encoding="utf-8")
    workload = profiles.load_workload(path, conversations=2, join=2, max_tokens=32, history_budget=128)
    assert workload.conversations == [["c0 t0", "c0 t1", "c1 t0", "c1 t1"], ["c2 t0", "c2 t1", "c3 t0", "c3 t1"]]
    assert workload.repeats == ["c0 t0", "c1 t0", "c2 t0", "c3 t0"]
    with pytest.raises(ValueError, match="5 conversations; 3 x 2 needed"):
        profiles.load_workload(path, conversations=3, join=2, max_tokens=32, history_budget=128)


def test_rerunning_some_benchmarks_keeps_the_others_records(tmp_path: Path) -> None:
    previous = {
        "quick": True,
        "machine": {"when": "2026-11-28 08:00:00"},
        "git_commit": "old",
        "benchmarks": [{"name": "ingest", "status": "ok"}, {"name": "retrieval", "status": "failed", "error": "x"}],
    }
    run_file = tmp_path / "run.json"
    run_file.write_text(json.dumps(previous), encoding="utf-8")
    assert run_all.kept_records(run_file, ["retrieval"], quick=True) == [
        {"name": "ingest", "status": "ok", "kept_from_run_of": "2026-11-28 08:00:00", "git_commit": "old"}
    ]
    assert run_all.kept_records(run_file, ["retrieval"], quick=False) == []  # a full run never mixes in quick ones
    assert run_all.kept_records(run_file, None, quick=True) == []


def test_a_benchmark_past_its_time_is_interrupted_and_failed(tmp_path: Path) -> None:
    sleeper = step("timeit", "-n", "1", "-r", "1", "import time; time.sleep(60)")
    record = run_all.run_step(sleeper, tmp_path, True, None, 1)
    assert record["status"] == "failed"
    assert record["error"].startswith("timed out after 1 s")
    assert "KeyboardInterrupt" in record["error"]  # interrupted like Ctrl-C, so its `finally` blocks ran
    assert record["seconds"] < 30
