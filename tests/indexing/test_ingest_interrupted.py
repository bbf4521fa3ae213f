"""SIGKILL an ingest midway, run it again: the index equals one built by an uninterrupted run."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from config.settings import REPO_ROOT, IndexSettings
from indexing.bm25 import Bm25Index
from indexing.docstore import DocStore, Inflight
from indexing.layout import IndexLayout
from indexing.manifest import read_manifest
from indexing.pipeline import ingest
from indexing.report import IngestReport
from tests.indexing.index_fixtures import PYTHON, chroma_records, cli_env
from tests.indexing.stalled_ingest import STALLED

TOPICS = ["rivers", "glaciers", "deserts", "forests", "oceans", "caves"]


def write_long_corpus(root: Path, topics: list[str] = TOPICS) -> Path:
    """Six files of ~3 kB; with commits of 5,000 characters the ingest takes three batches."""
    root.mkdir(parents=True)
    for n, topic in enumerate(topics):
        sections = [
            f"## {topic.title()} part {s}\n\n"
            + " ".join(f"Fact {s}.{i} about {topic}: sample sentence number {i} for file {n}." for i in range(8))
            for s in range(4)
        ]
        (root / f"{topic}.md").write_text(f"# {topic.title()}\n\n" + "\n\n".join(sections), encoding="utf-8")
    return root


def snapshot(settings: IndexSettings) -> dict[str, Any]:
    """Everything that defines the index: chunks (ids, text, metadata), docstore, manifest, BM25."""
    layout = IndexLayout(Path(settings.index_dir))
    manifest = read_manifest(layout.manifest)
    docstore = DocStore(layout.docstore, readonly=True)
    try:
        docs = {s: (r.file_hash, r.chunks, r.fingerprint) for s, r in docstore.records().items()}
        tokens = dict(docstore.chunk_tokens())
        inflight = docstore.inflight()
    finally:
        docstore.close()
    bm25 = Bm25Index.load(layout.bm25 / manifest.bm25_dir).ids if manifest.bm25_dir else []
    return {
        "chunks": chroma_records(settings),  # ids, text and all metadata, LlamaIndex's included
        "docs": docs,
        "tokens": tokens,
        "inflight": inflight,
        "manifest": (manifest.version, manifest.documents, manifest.chunks),
        "bm25": sorted(bm25),
    }


def kill_at(
    settings: IndexSettings,
    stage: str,
    nth: int,
    *extra: str,
    module: str = "tests.indexing.stalled_ingest",
    while_stalled: Callable[[int], None] | None = None,
) -> None:
    """Run an ingest (`python -m module stage nth *extra`) until it reaches `stage` for the `nth`
    time, call `while_stalled(pid)` if given, then SIGKILL it."""
    proc = subprocess.Popen(
        [PYTHON, "-m", module, stage, str(nth), *extra],
        cwd=REPO_ROOT,
        env=cli_env(settings),
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stderr, selectors.EVENT_READ)
    deadline = time.monotonic() + 180
    seen = ""
    try:
        while STALLED not in seen:
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail(f"ingest never reached {stage}:{nth} (exit {proc.poll()}):\n{seen}")
            if selector.select(timeout=1):
                seen += proc.stderr.readline()
        if while_stalled is not None:
            while_stalled(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        selector.close()
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, embed_model: Any) -> tuple[IndexSettings, dict[str, Any]]:
    """The corpus and the index an uninterrupted run builds from it."""
    root = tmp_path_factory.mktemp("interrupted")
    settings = IndexSettings(docs_dir=write_long_corpus(root / "docs"), index_dir=root / "clean", commit_chars=5000)
    assert ingest(settings, progress=False, embed_model=embed_model).ok
    return settings, snapshot(settings)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize(("stage", "nth"), [("after_vector_write", 2), ("after_commit", 1)])
def test_killed_ingest_heals_to_the_uninterrupted_index(
    tmp_path: Path,
    reference: tuple[IndexSettings, dict[str, Any]],
    run_ingest: Callable[..., IngestReport],
    stage: str,
    nth: int,
) -> None:
    clean, expected = reference
    assert len(expected["chunks"]) > 20 and len(expected["docs"]) == len(TOPICS)
    interrupted = clean.model_copy(update={"index_dir": tmp_path / "killed"})

    kill_at(interrupted, stage, nth)
    broken = snapshot(interrupted)
    assert broken["manifest"] != expected["manifest"], "the kill should leave the index incomplete"
    assert broken["chunks"] and 0 < len(broken["docs"]) < len(TOPICS)  # stored, but not all committed

    healed = run_ingest(interrupted)

    assert healed.ok, healed.summary()
    assert snapshot(interrupted) == expected


def test_removal_left_in_flight_is_completed(settings: IndexSettings, run_ingest: Callable[..., IngestReport]) -> None:
    """The state a kill leaves inside a prune: the file marked for removal, its chunks maybe gone."""
    first = run_ingest(settings)
    gone = Path(settings.docs_dir) / "trains.csv"
    gone.unlink()
    docstore = DocStore(IndexLayout(Path(settings.index_dir)).docstore)
    docstore.mark_inflight([Inflight("trains.csv", str(gone), "remove")])
    docstore.close()

    healed = run_ingest(settings)  # no --prune: finishing the interrupted removal is not optional

    assert healed.removed == ["trains.csv"] and healed.version != first.version
    assert all(meta["source"] != "trains.csv" for _, meta in chroma_records(settings).values())
    assert snapshot(settings)["inflight"] == []


def test_upsert_left_in_flight_outside_this_runs_paths_is_redone(
    settings: IndexSettings, run_ingest: Callable[..., IngestReport]
) -> None:
    run_ingest(settings)
    docs = Path(settings.docs_dir)
    (docs / "cooking.txt").write_text("Flatbread needs no yeast at all.\n", encoding="utf-8")
    docstore = DocStore(IndexLayout(Path(settings.index_dir)).docstore)
    docstore.mark_inflight([Inflight("cooking.txt", str(docs / "cooking.txt"), "upsert")])
    docstore.close()

    healed = run_ingest(settings, [docs / "nested"])

    assert healed.updated == ["cooking.txt"] and healed.unchanged == ["nested/chess.md"]
    texts = [text for text, meta in chroma_records(settings).values() if meta["source"] == "cooking.txt"]
    assert texts == ["Flatbread needs no yeast at all."]
