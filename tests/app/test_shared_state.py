"""`state.mode: shared` on real engines: two API replicas (two uvicorn processes of `app.api`)
over one PostgreSQL (Debian's server on loopback) and one Chroma server, with the session's vLLM
server answering (the session's servers and replicas: tests/app/conftest.py, which also runs the
API tests through these replicas). Each replica has its own cache folder, conversations file and turn-store file,
so anything one replica sees of the other's work came through the shared servers."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import chromadb
import httpx
import pytest
from pydantic import SecretStr

from app.store import ChatStore
from config.settings import IndexSettings, sqlalchemy_url
from indexing.records import IndexRecords
from tests.app.replicas import AUTH, Replica, Shared, checkpointed_texts, shared_env
from tests.llm_server import LLMServer

pytestmark = [pytest.mark.integration]

OTTER = b"# Otter rota\n\nThe river otters in enclosure nine are weighed every Thursday by keeper Marisol.\n"


def test_a_conversation_started_on_one_replica_continues_on_the_other(
    shared: Shared, replicas: tuple[Replica, Replica]
) -> None:
    a, b = replicas
    conversation = f"shared-{uuid.uuid4().hex[:8]}"

    a.chat("How do I upload a document?", conversation, use_cache=False)
    b.chat("And how do I delete it again?", conversation, use_cache=False)

    store = ChatStore(sqlalchemy_url(shared.postgres_url))
    try:
        questions = [t.question for t in store.turns(conversation)]
    finally:
        store.close()
    assert questions == ["How do I upload a document?", "And how do I delete it again?"]
    remembered = asyncio.run(checkpointed_texts(shared.postgres_url, conversation))
    # B's agent ran on top of A's turn: one thread holds both questions, in order.
    assert [q for q in remembered if q in questions] == questions
    for replica in replicas:  # nothing went to the private files
        own = Path(replica.log).parent
        assert not (own / "conversations.sqlite").exists() and not (own / "app.sqlite").exists()


def test_a_document_uploaded_through_one_replica_is_followed_and_retrieved_through_the_other(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    files = [("files", ("otter rota.md", OTTER, "text/markdown"))]
    upload = httpx.post(f"{a.url}/v1/documents", files=files, headers=AUTH, timeout=60)
    assert upload.status_code == 202, upload.text
    job_id = upload.json()["job"]["id"]
    deadline = time.monotonic() + 300
    # The job runs on A and is followed on B: its snapshots are in PostgreSQL.
    while (job := httpx.get(f"{b.url}/v1/documents/jobs/{job_id}", headers=AUTH, timeout=30).json())["state"] not in (
        "done",
        "failed",
    ):
        assert time.monotonic() < deadline, "ingest job did not finish"
        time.sleep(0.3)
    assert job["state"] == "done" and job["results"] == [
        {"path": "uploads/otter rota.md", "status": "added", "reason": None}
    ]

    answer = b.chat("When are the river otters in enclosure nine weighed?", use_cache=False, top_k=3)

    assert any(s["file"].endswith("otter rota.md") for s in answer["sources"]), answer["sources"]


def test_an_answer_cached_by_one_replica_is_a_hit_on_the_other(replicas: tuple[Replica, Replica]) -> None:
    a, b = replicas
    question = "What file types can I upload to the assistant?"

    first = a.chat(question)
    second = b.chat(question)

    assert first["cached"] is False
    assert second["cached"] is True
    assert second["choices"][0]["message"]["content"] == first["choices"][0]["message"]["content"]


def test_two_ingests_at_once_on_the_chroma_server_both_finish_consistently(
    shared: Shared, vllm_server: LLMServer, tmp_path: Path
) -> None:
    """Two ingest processes of one index at the same moment: the PostgreSQL lock makes the second
    wait for the first; the index then holds both folders' chunks exactly once."""
    docs = shared.root / "docs" / "user-guide"
    halves = sorted(docs.iterdir())
    one, two = tmp_path / "one", tmp_path / "two"
    for folder, files in ((one, halves[::2]), (two, halves[1::2])):
        folder.mkdir()
        for f in files:
            shutil.copy(f, folder / f.name)
    env = shared_env(shared, vllm_server, tmp_path)
    env["RAG_INDEX__INDEX_DIR"] = str(tmp_path / "index")
    env["RAG_INDEX__COLLECTION"] = "concurrent-ingest"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "indexing", "ingest", "--quiet", str(folder)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for folder in (one, two)
    ]
    waited = saw_an_ingest_waiting_for_the_lock(shared.postgres_url, procs)
    outputs = [p.communicate(timeout=600)[0].decode() for p in procs]

    assert [p.returncode for p in procs] == [0, 0], outputs
    assert waited, "the two ingests never met at the lock: the test did not exercise it"
    index = IndexSettings(
        index_dir=tmp_path / "index",
        collection="concurrent-ingest",
        chroma_mode="http",
        chroma_port=shared.chroma_port,
        state_url=SecretStr(shared.postgres_url),
    )
    with IndexRecords(index) as records:  # in PostgreSQL: what every host reads
        manifest = records.require_index()
        chunk_ids = list(records.docstore().sorted_chunk_ids())
        documents, chunks = records.docstore().counts()
    client = chromadb.HttpClient(host="127.0.0.1", port=shared.chroma_port)
    stored = client.get_collection("concurrent-ingest").get(include=[])["ids"]
    assert documents == len(halves) == manifest.documents
    assert sorted(stored) == chunk_ids and len(set(stored)) == len(stored) == chunks == manifest.chunks


def saw_an_ingest_waiting_for_the_lock(url: str, procs: list[subprocess.Popen[bytes]]) -> bool:
    """Watch PostgreSQL while the processes run: was an ingest ever waiting on the advisory lock?"""
    import psycopg

    seen = False
    with psycopg.connect(url, autocommit=True) as conn:
        while any(p.poll() is None for p in procs):
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'ragchat ingest%' "
                "AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
            ).fetchone()
            seen = seen or bool(row and row[0])
            time.sleep(0.2)
    return seen
