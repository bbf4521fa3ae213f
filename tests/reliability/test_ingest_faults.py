"""Ingest faults on a real embedded index (Chroma on disk, SQLite docstore, BM25, MiniLM):
SIGKILLed at seeded random points again and again, a second writer at the same time, the disk
full, and queries while it writes."""

from __future__ import annotations

import errno
import os
import random
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from llama_index.vector_stores.chroma import ChromaVectorStore

from config.settings import IndexSettings
from indexing.docstore import DocStore
from indexing.errors import DiskFullError, IndexLockedError
from indexing.pipeline import ingest
from tests.indexing.index_fixtures import chroma_records
from tests.indexing.test_ingest_interrupted import kill_at, snapshot, write_long_corpus

pytestmark = [pytest.mark.integration]

SEED = 20261128
KILLS = 5


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve ~3 kB files; with `commit_chars=1000` each is a batch of its own."""
    root = tmp_path_factory.mktemp("ingest-faults") / "docs"
    write_long_corpus(root / "a")
    write_long_corpus(root / "b")
    return root


@pytest.fixture(scope="module")
def reference(
    tmp_path_factory: pytest.TempPathFactory, corpus: Path, embed_model: Any
) -> tuple[IndexSettings, dict[str, Any]]:
    """The index one uninterrupted ingest builds from the corpus."""
    settings = IndexSettings(docs_dir=corpus, index_dir=tmp_path_factory.mktemp("clean") / "index", commit_chars=1000)
    assert ingest(settings, progress=False, embed_model=embed_model).ok
    return settings, snapshot(settings)


def _kill_plan(rng: random.Random) -> list[tuple[str, int, str]]:
    """Where each kill lands: a point inside or between a batch's writes, which batch of the run,
    how much of a vector write is done; the last kill lands in the end-of-run BM25/manifest step."""
    plan = []
    for _ in range(KILLS - 1):
        point = rng.choice(["mid_vector_write", "after_vector_write", "after_commit"])
        plan.append((point, rng.randint(1, 2), f"{rng.uniform(0.1, 0.9):.2f}"))
    return [*plan, ("in_finish", 1, "0")]


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_ingest_killed_five_times_at_random_points_heals_to_one_clean_ingest(
    tmp_path: Path, reference: tuple[IndexSettings, dict[str, Any]], embed_model: Any
) -> None:
    clean, expected = reference
    settings = clean.model_copy(update={"index_dir": tmp_path / "killed"})
    plan = _kill_plan(random.Random(SEED))
    refused: list[str] = []

    def second_writer(pid: int) -> None:
        """A second ingest while the first holds the index: refused at once, naming the holder."""
        with pytest.raises(IndexLockedError) as exc:
            ingest(settings, progress=False, embed_model=embed_model)
        refused.append(str(exc.value))
        assert f"pid {pid} on" in refused[-1] and "state.mode=shared" in refused[-1]

    states = []
    for n, (point, nth, fraction) in enumerate(plan):
        kill_at(
            settings,
            point,
            nth,
            fraction,
            module="tests.reliability.killable_ingest",
            while_stalled=second_writer if n == 0 else None,
        )
        states.append(snapshot(settings))
    assert len(refused) == 1
    assert all(s["manifest"] != expected["manifest"] for s in states), "every kill left the index unfinished"
    assert len({len(s["docs"]) for s in states}) > 1, "the kills landed in different batches"

    healed = ingest(settings, progress=False, embed_model=embed_model)

    assert healed.ok, healed.summary()
    final = snapshot(settings)
    assert final == expected  # same chunk ids, texts, metadata, docstore, BM25 and manifest
    keys = [(meta["source"], meta["chunk"]) for _, meta in final["chunks"].values()]
    assert len(keys) == len(set(keys)), "a chunk is stored twice"
    assert final["manifest"][2] == len(final["chunks"]) == sum(d[1] for d in final["docs"].values())
    assert final["inflight"] == []


class _DiskFull:
    """Raise ENOSPC from one write step after `after` successful calls, as a full disk would."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.calls = 0

    def check(self) -> None:
        self.calls += 1
        if self.calls > self.after:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("step", ["vector_write", "docstore_commit"])
def test_disk_full_during_ingest_is_a_clear_error_and_loses_nothing_stored(
    tmp_path: Path,
    reference: tuple[IndexSettings, dict[str, Any]],
    embed_model: Any,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
) -> None:
    clean, expected = reference
    settings = clean.model_copy(update={"index_dir": tmp_path / "index"})
    first = ingest(settings, [Path(clean.docs_dir) / "a"], progress=False, embed_model=embed_model)
    assert first.ok
    before = snapshot(settings)

    full = _DiskFull(after=2)
    if step == "vector_write":
        add = ChromaVectorStore.add

        def failing_add(self: ChromaVectorStore, nodes: Any, **kwargs: Any) -> Any:
            full.check()
            return add(self, nodes, **kwargs)

        monkeypatch.setattr(ChromaVectorStore, "add", failing_add)
    else:
        commit = DocStore.commit

        def failing_commit(self: DocStore, entries: Any) -> None:
            full.check()
            commit(self, entries)

        monkeypatch.setattr(DocStore, "commit", failing_commit)

    with pytest.raises(DiskFullError) as failed:
        ingest(settings, progress=False, embed_model=embed_model)
    message = str(failed.value)
    assert failed.value.errno == errno.ENOSPC and "No space left on device" in message
    assert "is full" in message and "committed before are kept" in message and "run the ingest again" in message

    after = snapshot(settings)
    assert after["manifest"] == before["manifest"], "the manifest still describes what is committed"
    assert set(before["docs"]) < set(after["docs"]), "the batches committed before the disk filled are kept"
    for source, record in before["docs"].items():
        assert after["docs"][source] == record
    assert set(before["chunks"]) <= set(after["chunks"])

    monkeypatch.undo()  # space freed: the next run finishes the job
    healed = ingest(settings, progress=False, embed_model=embed_model)
    assert healed.ok, healed.summary()
    assert snapshot(settings) == expected


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs of its own (the tests run as root, as CI does)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)


@pytest.mark.timeout(180)
def test_a_really_full_disk_stops_the_ingest_clearly_and_keeps_what_was_committed(
    small_disk: Path, reference: tuple[IndexSettings, dict[str, Any]], embed_model: Any
) -> None:
    """No injection: the index lives on a small tmpfs that a ballast file fills up mid-ingest."""
    from indexing.retrieval import open_retriever

    clean, expected = reference
    settings = clean.model_copy(update={"index_dir": small_disk / "index"})
    assert ingest(settings, [Path(clean.docs_dir) / "a"], progress=False, embed_model=embed_model).ok
    before = snapshot(settings)
    ballast = small_disk / "ballast"
    with ballast.open("wb") as fh:  # leave ~200 kB: less than the other six files need
        fh.write(b"\0" * max(0, shutil.disk_usage(small_disk).free - 200 * 1024))

    with pytest.raises(DiskFullError) as failed:
        ingest(settings, progress=False, embed_model=embed_model)
    message = str(failed.value)
    assert f"the disk holding the index at {settings.index_dir} is full" in message
    assert "run the ingest again" in message

    ballast.unlink()  # space freed (Chroma cannot even be read on a full disk: a read compacts its log)
    after = snapshot(settings)
    assert after["manifest"] == before["manifest"] and set(before["chunks"]) <= set(after["chunks"])
    for source, record in before["docs"].items():
        assert after["docs"][source] == record
    with open_retriever(settings, embed_model=embed_model) as retriever:  # answers from what was published
        found = retriever.retrieve("Fact 1.2 about glaciers")
        assert found and {p.node_id for p in found} <= set(before["chunks"])

    healed = ingest(settings, progress=False, embed_model=embed_model)
    assert healed.ok, healed.summary()
    assert snapshot(settings) == expected


@pytest.mark.timeout(240)
def test_queries_during_an_ingest_see_one_consistent_index_version(
    tmp_path: Path, reference: tuple[IndexSettings, dict[str, Any]], embed_model: Any
) -> None:
    """Retrieval keeps answering while another writer commits batch after batch; every answer comes
    from one published version: its passages all exist in that version's chunks."""
    from indexing.retrieval import open_retriever

    clean, _ = reference
    docs = tmp_path / "docs"
    shutil.copytree(Path(clean.docs_dir) / "a", docs / "a")
    settings = clean.model_copy(update={"index_dir": tmp_path / "index", "docs_dir": docs, "top_k": 4})
    assert ingest(settings, progress=False, embed_model=embed_model).ok
    topics = ["volcanoes", "comets", "tides", "lichens", "auroras", "geysers"]
    write_long_corpus(docs / "new", topics)  # what the queries ask about arrives with the ingest
    versions: dict[str, set[str]] = {}

    def record_version() -> None:
        snap = snapshot(settings)
        versions[snap["manifest"][0]] = set(snap["chunks"])

    record_version()
    done = threading.Event()
    failures: list[BaseException] = []

    def write() -> None:
        try:
            report = ingest(settings, progress=False, embed_model=embed_model)
            assert report.ok and len(report.added) == len(topics)
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)
        finally:
            done.set()

    answers: list[tuple[set[str], list[str]]] = []
    with open_retriever(settings, embed_model=embed_model) as retriever:
        writer = threading.Thread(target=write, name="ingest-writer")
        writer.start()
        while not done.is_set() or len(answers) < 12:
            topic = topics[len(answers) % len(topics)]
            before = retriever.index_version
            passages = retriever.retrieve(f"Fact 2.3 about {topic}")
            answers.append(({before, retriever.index_version}, [p.node_id for p in passages]))
            assert len(answers) < 2000, "the ingest never finished"
        writer.join(timeout=120)
        record_version()
        final_version = retriever.index_version
    assert not failures, failures
    assert final_version in versions and len(versions) == 2
    seen = set().union(*(around for around, _ in answers))
    assert seen <= set(versions), f"answers came from unpublished versions {seen - set(versions)}"
    for around, ids in answers:  # the version before or after the call (it may publish meanwhile)
        assert ids and any(set(ids) <= versions[v] for v in around), "passages from no single published version"
    assert len(chroma_records(settings)) == len(versions[final_version])


def test_kill_plan_is_seeded() -> None:
    """The kill points are random but reproducible: the same seed, the same plan."""
    assert _kill_plan(random.Random(SEED)) == _kill_plan(random.Random(SEED))
    assert len(_kill_plan(random.Random(SEED))) == KILLS
