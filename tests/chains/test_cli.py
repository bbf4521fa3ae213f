"""`python -m chains`: ask, chat from a pipe, cache stats/clear, and clear errors on bad input."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from chains.cli import main


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, index_dir: Path) -> Path:
    """Point every path the CLI's settings name at the test index and tmp_path."""
    monkeypatch.setenv("RAG_INDEX__INDEX_DIR", str(index_dir))
    monkeypatch.setenv("RAG_CHAINS__CONVERSATIONS_DB", str(tmp_path / "conversations.sqlite"))
    monkeypatch.setenv("RAG_CACHE__DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("RAG_LLM__BASE_URL", "http://127.0.0.1:9/v1")
    return tmp_path


@pytest.fixture
def live_cli(cli_env: Path, monkeypatch: pytest.MonkeyPatch, vllm_server: Any) -> Path:
    monkeypatch.setenv("RAG_LLM__BASE_URL", vllm_server.base_url)
    monkeypatch.setenv("RAG_LLM__MODEL", vllm_server.model)
    return cli_env


def test_empty_question_exits_2_with_a_message(cli_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--profile", "test", "ask", "   "]) == 2
    assert "question is empty" in capsys.readouterr().err


def test_bad_conversation_id_exits_2(cli_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--profile", "test", "ask", "hi", "--conversation", "a b"]) == 2
    assert "conversation id" in capsys.readouterr().err


def test_missing_index_exits_2_and_says_to_ingest(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RAG_INDEX__INDEX_DIR", str(cli_env / "no-index-here"))
    assert main(["--profile", "test", "ask", "hi"]) == 2
    assert "make ingest" in capsys.readouterr().err


def test_unknown_profile_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--profile", "nope", "ask", "hi"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_dead_server_still_answers_from_retrieval(cli_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--profile", "test", "ask", "What does the warranty cover?"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("The language model is unavailable")
    assert "Sources (retrieval only):" in out and "warranty.md" in out and "Timings:" in out


@pytest.mark.integration
def test_ask_streams_then_prints_sources_and_timings(live_cli: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--profile", "test", "ask", "What does the warranty cover?", "--conversation", "cli"]) == 0
    out = capsys.readouterr().out
    answer, _, report = out.partition("\n\nSources:\n")
    assert answer and "  [1] " in report and "Timings: cache" in report and "first token" in report

    assert main(["--profile", "test", "ask", "What does the warranty cover?", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["cached"] is True and result["answer"] == answer

    assert main(["--profile", "test", "cache-stats"]) == 0
    assert json.loads(capsys.readouterr().out)["entries"] == 1
    assert main(["--profile", "test", "cache-clear"]) == 0
    capsys.readouterr()
    assert main(["--profile", "test", "cache-stats"]) == 0
    assert json.loads(capsys.readouterr().out)["entries"] == 0


@pytest.mark.integration
def test_chat_reads_questions_from_a_pipe(
    live_cli: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        "sys.stdin", io.StringIO("What does the warranty cover?\n\n   \nand the battery?\n/exit\nignored\n")
    )
    assert main(["--profile", "test", "chat", "--no-cache"]) == 0
    out = capsys.readouterr().out
    assert out.count("you> ") == 2 and out.count("Timings:") == 2
    assert "you> ignored" not in out
