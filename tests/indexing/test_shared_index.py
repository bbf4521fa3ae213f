"""Shared mode across hosts: the docstore and manifest in PostgreSQL, BM25 derived per host.

"Host A" ingests with its own index folder; "host B" has a different, empty one and sees only the
real PostgreSQL (Debian's server on loopback) and the real Chroma server (`chroma run`) they share.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import chromadb
import pytest
from pydantic import SecretStr

from config.settings import IndexSettings
from indexing import IndexNotFoundError, NotAnIndexError, StoreUnavailableError, open_retriever
from indexing.records import IndexRecords
from indexing.report import IngestReport
from indexing.retrieval import Mode
from serving.launch import free_port
from tests.indexing.test_ingest_interrupted import kill_at, write_long_corpus
from tests.shared_servers import fresh_database

pytestmark = pytest.mark.integration

MODES: tuple[Mode, ...] = ("hybrid", "dense", "bm25")
QUERIES = ["bowline knot rope loop", "largest planet gas giant", "sourdough starter", "Etna volcano Europe"]


@pytest.fixture(scope="module")
def database(postgres_url: str) -> str:
    """A database of this module's own: only its rows, so table counts below are exact."""
    return fresh_database(postgres_url)


@pytest.fixture
def on_server(database: str, chroma_port: int) -> Callable[..., IndexSettings]:
    """Shared-mode settings (as `state.mode: shared` fills them) over a collection of this test's own."""
    collection = f"hosts-{uuid.uuid4().hex[:8]}"

    def make(base: IndexSettings, index_dir: Path, **update: Any) -> IndexSettings:
        fields = {"chroma_mode": "http", "chroma_port": chroma_port, "state_url": SecretStr(database)}
        return base.model_copy(update={"index_dir": index_dir, "collection": collection, **fields, **update})

    return make


def ranked(retriever: Any, query: str, mode: Mode) -> list[str]:
    return [p.node_id for p in retriever.retrieve(query, top_k=4, mode=mode)]


def test_a_host_with_an_empty_folder_retrieves_what_the_ingesting_host_does(
    tmp_path: Path,
    settings: IndexSettings,
    on_server: Callable[..., IndexSettings],
    run_ingest: Callable[..., IngestReport],
    embed_model: Any,
) -> None:
    host_a = on_server(settings, tmp_path / "host-a")
    host_b = on_server(settings, tmp_path / "host-b")
    first = run_ingest(host_a)
    assert first.ok and first.chunks >= 8
    assert sorted(p.name for p in (tmp_path / "host-a").iterdir()) == ["bm25"]  # nothing else is local

    with open_retriever(host_a, embed_model=embed_model) as a, open_retriever(host_b, embed_model=embed_model) as b:
        for query in QUERIES:
            for mode in MODES:
                assert ranked(b, query, mode) == ranked(a, query, mode), (query, mode)
        assert b.index_version == a.index_version == first.version
        cached = IndexRecords(host_b).bm25_root
        assert cached.parent == tmp_path / "host-b" / "bm25"
        assert [p.name for p in cached.iterdir()] == [first.version]  # derived, cached
        assert {p.source for p in b.retrieve(QUERIES[0], top_k=2, mode="bm25")} == {"sailing.docx"}

        (Path(settings.docs_dir) / "sailing.docx").unlink()
        again = run_ingest(host_a, prune=True)  # host A re-ingests; B must notice on its next call

        assert again.removed == ["sailing.docx"]
        assert b.index_version == again.version != first.version
        mixed = "a bowline knot on a rope, or the largest planet"  # still matches something in every mode
        for mode in MODES:
            hits = b.retrieve(mixed, top_k=8, mode=mode)
            assert hits and "sailing.docx" not in {p.source for p in hits}, mode
            assert [p.node_id for p in hits] == [p.node_id for p in a.retrieve(mixed, top_k=8, mode=mode)]


def test_two_collections_on_one_database_keep_their_own_records(
    tmp_path: Path,
    settings: IndexSettings,
    on_server: Callable[..., IndexSettings],
    run_ingest: Callable[..., IngestReport],
) -> None:
    docs = Path(settings.docs_dir)
    one = on_server(settings, tmp_path / "one", collection=f"one-{uuid.uuid4().hex[:8]}")
    two = on_server(settings, tmp_path / "two", collection=f"two-{uuid.uuid4().hex[:8]}")

    run_ingest(one, [docs / "cooking.txt"])
    run_ingest(two, [docs / "trains.csv", docs / "volcano.json"])

    with IndexRecords(one) as r1, IndexRecords(two) as r2:
        assert set(r1.docstore().records()) == {"cooking.txt"}
        assert set(r2.docstore().records()) == {"trains.csv", "volcano.json"}
        m1, m2 = r1.require_index(), r2.require_index()
        assert (m1.documents, m1.collection) == (1, one.collection)
        assert (m2.documents, m2.collection) == (2, two.collection)
        assert not set(r1.docstore().sorted_chunk_ids()) & set(r2.docstore().sorted_chunk_ids())


def test_a_missing_index_an_unreachable_database_and_a_foreign_local_folder_are_clear_errors(
    tmp_path: Path,
    settings: IndexSettings,
    on_server: Callable[..., IndexSettings],
    run_ingest: Callable[..., IngestReport],
) -> None:
    with pytest.raises(IndexNotFoundError, match=r"no index for 127\.0\.0\.1:\d+/hosts-\w+ in PostgreSQL"):
        open_retriever(on_server(settings, tmp_path / "nothing-yet"))
    nowhere = SecretStr(f"postgresql://rag@127.0.0.1:{free_port()}/rag")
    with pytest.raises(StoreUnavailableError, match=r"cannot open the index docstore .*Connection refused"):
        open_retriever(on_server(settings, tmp_path / "no-database", state_url=nowhere))
    busy = tmp_path / "thesis"
    busy.mkdir()
    (busy / "chapter1.tex").write_text("my work", encoding="utf-8")

    with pytest.raises(NotAnIndexError, match=r"only caches BM25 for this host, but it holds: chapter1\.tex"):
        run_ingest(on_server(settings, busy))
    assert sorted(p.name for p in busy.iterdir()) == ["chapter1.tex"]


def snapshot(settings: IndexSettings, scratch: Path) -> dict[str, Any]:
    """What a shared index is: chunks on the Chroma server, docstore and manifest rows in PostgreSQL,
    and the BM25 any host derives (built here into a fresh, empty folder)."""
    client = chromadb.HttpClient(host=settings.chroma_host, port=settings.chroma_port)
    got = client.get_collection(settings.collection).get(include=["documents", "metadatas"])
    chunks = {i: (d, dict(m)) for i, d, m in zip(got["ids"], got["documents"], got["metadatas"], strict=True)}
    with IndexRecords(settings) as records:
        store = records.docstore()
        manifest = records.require_index()
        tokens = dict(store.chunk_tokens())
        docs = {s: (r.file_hash, r.chunks, r.fingerprint) for s, r in store.records().items()}
        inflight = store.inflight()
    with IndexRecords(settings.model_copy(update={"index_dir": scratch})) as fresh:
        bm25 = sorted(fresh.bm25(manifest).ids)
    return {
        "chunks": chunks,
        "ids": len(got["ids"]),
        "docs": docs,
        "tokens": tokens,
        "inflight": inflight,
        "manifest": (manifest.version, manifest.documents, manifest.chunks),
        "bm25": bm25,
    }


@pytest.mark.slow
def test_killed_shared_ingest_resumes_to_the_uninterrupted_index(
    tmp_path: Path,
    settings: IndexSettings,
    on_server: Callable[..., IndexSettings],
    run_ingest: Callable[..., IngestReport],
) -> None:
    long_docs = write_long_corpus(tmp_path / "long")
    clean = on_server(
        settings, tmp_path / "clean", docs_dir=long_docs, commit_chars=5000, collection="clean-" + uuid.uuid4().hex[:8]
    )
    assert run_ingest(clean).ok
    expected = snapshot(clean, tmp_path / "scratch-1")
    assert len(expected["chunks"]) == expected["ids"] == len(expected["tokens"]) > 20
    killed = clean.model_copy(update={"index_dir": tmp_path / "killed", "collection": "killed-" + uuid.uuid4().hex[:8]})

    kill_at(killed, "after_vector_write", 2)  # a subprocess in shared mode, SIGKILLed mid-batch
    broken = snapshot(killed, tmp_path / "scratch-2")
    assert broken["manifest"] != expected["manifest"] and broken["inflight"]  # stored, not all committed

    healed = run_ingest(killed.model_copy(update={"index_dir": tmp_path / "another-host"}))

    assert healed.ok, healed.summary()
    assert snapshot(killed, tmp_path / "scratch-3") == expected  # same chunk ids, no duplicates, same manifest
