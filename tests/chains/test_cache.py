"""The semantic cache on real GPTCache (sqlite + faiss on disk) and the real MiniLM embedding."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import gptcache.utils
import numpy as np
import pytest

from chains.cache import (
    CachedAnswer,
    CacheScope,
    GuardName,
    InstallDisabledError,
    SemanticCache,
    SharedServers,
    model_verifier,
)
from config import SettingsError, load_settings
from config.settings import REPO_ROOT, sqlalchemy_url
from indexing.embeddings import OFFLINE_MINILM, load_embedding
from tests.shared_servers import fresh_database

SCOPE = CacheScope(index_version="idx-1", model="rag-model", prompt_version="p1")
QUESTION = "How much does the Pro plan cost per month?"
PARAPHRASE = "What is the monthly price of the Pro plan?"
NO_CONTENT: tuple[GuardName, ...] = ("numbers", "negation", "entities", "opposites")  # margin cases differ in content
SOURCES = [{"file": "pricing.md", "page": 2, "heading": "Plans", "chunk": 3, "score": 0.81, "snippet": "Pro: $20"}]


@pytest.fixture(scope="module")
def embedding() -> Any:
    return load_embedding(OFFLINE_MINILM, 64)


def make_cache(directory: Path, embedding: Any, **kwargs: Any) -> SemanticCache:
    kwargs.setdefault("similarity_threshold", 0.85)
    kwargs.setdefault("ttl_s", 3600)
    return SemanticCache(directory, embedding, OFFLINE_MINILM, **kwargs)


def answer(text: str = "The Pro plan costs $20 a month [1].", created_at: float | None = None) -> CachedAnswer:
    return CachedAnswer(text, SOURCES, time.time() if created_at is None else created_at)


@pytest.fixture(params=["embedded", pytest.param("shared", marks=pytest.mark.integration)])
def servers(request: pytest.FixtureRequest) -> SharedServers | None:
    """None (sqlite + faiss in a folder), or a fresh PostgreSQL database and the session's Chroma server."""
    if request.param == "embedded":
        return None
    database = fresh_database(request.getfixturevalue("postgres_url"))
    return SharedServers(sqlalchemy_url(database), "127.0.0.1", request.getfixturevalue("chroma_port"))


@pytest.fixture
def cache(tmp_path: Path, embedding: Any, servers: SharedServers | None) -> SemanticCache:
    """One stored answer, in each storage mode."""
    c = make_cache(tmp_path / "cache", embedding, shared=servers)
    c.store(QUESTION, SCOPE, answer())
    return c


@pytest.fixture
def local_cache(tmp_path: Path, embedding: Any) -> SemanticCache:
    """One stored answer in the embedded store, whose files a test can damage."""
    c = make_cache(tmp_path / "cache", embedding)
    c.store(QUESTION, SCOPE, answer())
    return c


def test_paraphrase_hits_with_answer_sources_and_similarity(cache: SemanticCache) -> None:
    hit = cache.lookup(PARAPHRASE, SCOPE).hit
    assert hit is not None
    assert hit.answer.answer == "The Pro plan costs $20 a month [1]."
    assert hit.answer.sources == SOURCES
    assert hit.matched_question == QUESTION
    assert 0.85 <= hit.similarity < 1.0
    exact = cache.lookup(f"  {QUESTION}  ", SCOPE).hit
    assert exact is not None and exact.similarity == pytest.approx(1.0, abs=1e-4)


def test_a_lookup_returns_the_vector_it_searched_with_and_store_reuses_it(cache: SemanticCache, embedding: Any) -> None:
    miss = cache.lookup("Who founded the company?", SCOPE)
    assert miss.hit is None and miss.vector is not None
    assert miss.vector == pytest.approx(embedding.get_query_embedding("Who founded the company?"), abs=1e-5)
    hit = cache.lookup(f"{PARAPHRASE} ", SCOPE)
    assert hit.hit is not None
    assert hit.vector == pytest.approx(embedding.get_query_embedding(PARAPHRASE), abs=1e-5)
    # Stored under the lookup's vector: found by a paraphrase exactly as if it had been embedded again.
    cache.store("Who founded the company?", SCOPE, answer("Ann"), vector=miss.vector)
    found = cache.lookup("Who was it that founded the company?", SCOPE).hit
    assert found is not None and found.answer.answer == "Ann"
    with pytest.raises(ValueError, match="dimensions"):
        cache.store("Who founded the company?", SCOPE, answer("Ann"), vector=[0.1, 0.2])


def test_unrelated_question_misses(cache: SemanticCache) -> None:
    assert cache.lookup("Who founded the company and when?", SCOPE).hit is None
    assert cache.lookup("How do I reset my password?", SCOPE).hit is None


def test_threshold_is_cosine_not_gptcache_distance(tmp_path: Path, embedding: Any) -> None:
    """A hit needs cosine >= threshold: just above the pair's cosine misses, just below hits."""
    a, b = (np.asarray(embedding.get_query_embedding(q)) for q in (QUESTION, PARAPHRASE))
    cosine = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    strict = make_cache(tmp_path / "strict", embedding, similarity_threshold=cosine + 0.005)
    loose = make_cache(tmp_path / "loose", embedding, similarity_threshold=cosine - 0.005)
    for c in (strict, loose):
        c.store(QUESTION, SCOPE, answer())
    assert strict.lookup(PARAPHRASE, SCOPE).hit is None
    hit = loose.lookup(PARAPHRASE, SCOPE).hit
    assert hit is not None and hit.similarity == pytest.approx(cosine, abs=1e-3)


@pytest.mark.parametrize(
    ("cached", "near_miss"),
    [
        ("What was our revenue in 2023?", "What was our revenue in 2024?"),
        ("Can I run the model without a GPU?", "Can I run the model with a GPU?"),
        ("How many people work at Acme?", "How many people work at Globex?"),
        ("How do I upload a dataset?", "How do I download a dataset?"),
        ("What are good gifts for a teenage boy?", "What are good gifts for a teenage girl?"),
        ("How can I improve my english?", "How can I improve my english pronunciation?"),
    ],
)
def test_guards_block_near_misses_the_vector_search_accepts(
    tmp_path: Path, embedding: Any, cached: str, near_miss: str
) -> None:
    guarded = make_cache(tmp_path / "guarded", embedding, similarity_threshold=0.6)
    unguarded = make_cache(tmp_path / "unguarded", embedding, similarity_threshold=0.6, guards=())
    for c in (guarded, unguarded):
        c.store(cached, SCOPE, answer("cached answer"))
    assert unguarded.lookup(near_miss, SCOPE).hit is not None  # the embedding alone calls it the same question
    assert guarded.lookup(near_miss, SCOPE).hit is None


def test_a_guarded_candidate_does_not_hide_a_valid_one(tmp_path: Path, embedding: Any) -> None:
    c = make_cache(tmp_path / "c", embedding, similarity_threshold=0.7)
    c.store("What was our revenue in 2024?", SCOPE, answer("2024 revenue"))
    c.store("What were our revenues in 2023?", SCOPE, answer("2023 revenue"))
    hit = c.lookup("What was our revenue in 2023?", SCOPE).hit
    assert hit is not None and hit.answer.answer == "2023 revenue"


def test_two_cached_questions_fitting_equally_well_are_a_miss(tmp_path: Path, embedding: Any) -> None:
    """The best match must beat the runner-up by the ambiguity margin, else the cache declines."""
    first, second = "How do I book a flight for a business trip?", "How do I book a hotel for a business trip?"
    asked = "How do I book travel for a business trip?"
    a, b, q = (np.asarray(embedding.get_query_embedding(t)) for t in (first, second, asked))
    sims = sorted((float(q @ a), float(q @ b)), reverse=True)
    gap = sims[0] - sims[1]
    assert sims[1] > 0.75 and gap < 0.03  # the premise: both fit, about equally
    for margin, hits in ((gap + 0.005, False), (max(0.0, gap - 0.005), True)):
        c = make_cache(
            tmp_path / f"m{margin}", embedding, similarity_threshold=0.7, ambiguity_margin=margin, guards=NO_CONTENT
        )
        c.store(first, SCOPE, answer("change"))
        c.store(second, SCOPE, answer("reset"))
        assert (c.lookup(asked, SCOPE).hit is not None) is hits
    twice = make_cache(
        tmp_path / "twice", embedding, similarity_threshold=0.7, ambiguity_margin=0.05, guards=NO_CONTENT
    )
    twice.store(first, SCOPE, answer("old"))
    twice.store(first, SCOPE, answer("new"))  # the same question stored twice is not ambiguous
    assert twice.lookup(asked, SCOPE).hit is not None


@pytest.mark.parametrize(
    "changed",
    [
        CacheScope("idx-2", SCOPE.model, SCOPE.prompt_version),
        CacheScope(SCOPE.index_version, "other-model", SCOPE.prompt_version),
        CacheScope(SCOPE.index_version, SCOPE.model, "p2"),
    ],
    ids=["index_version", "model", "prompt_version"],
)
def test_a_changed_scope_never_sees_old_answers(cache: SemanticCache, changed: CacheScope) -> None:
    assert cache.lookup(QUESTION, changed).hit is None
    cache.store(QUESTION, changed, answer("new-scope answer"))
    new = cache.lookup(PARAPHRASE, changed).hit
    old = cache.lookup(PARAPHRASE, SCOPE).hit
    assert new is not None and new.answer.answer == "new-scope answer"
    assert old is not None and old.answer.answer == "The Pro plan costs $20 a month [1]."


def test_old_scope_folders_are_pruned(tmp_path: Path, embedding: Any) -> None:
    c = make_cache(tmp_path / "c", embedding, max_scopes=2)
    for version in ("v1", "v2", "v3"):
        c.store(QUESTION, CacheScope(version, "m", "p"), answer(version))
        c.close()  # only closed scopes may be pruned
        time.sleep(0.02)  # distinct folder mtimes
    assert len(list((tmp_path / "c" / "scopes").iterdir())) == 2
    assert c.lookup(QUESTION, CacheScope("v1", "m", "p")).hit is None
    hit = c.lookup(QUESTION, CacheScope("v3", "m", "p")).hit
    assert hit is not None and hit.answer.answer == "v3"


def test_expired_entries_are_never_served(tmp_path: Path, embedding: Any) -> None:
    now = [1_000_000.0]
    c = make_cache(tmp_path / "c", embedding, ttl_s=60, clock=lambda: now[0])
    c.store(QUESTION, SCOPE, answer(created_at=now[0]))
    now[0] += 59
    assert c.lookup(PARAPHRASE, SCOPE).hit is not None
    now[0] += 2
    assert c.lookup(PARAPHRASE, SCOPE).hit is None
    c.store(QUESTION, SCOPE, answer("fresh", created_at=now[0]))
    hit = c.lookup(PARAPHRASE, SCOPE).hit
    assert hit is not None and hit.answer.answer == "fresh"


def test_entries_persist_for_a_new_object(cache: SemanticCache, embedding: Any, servers: SharedServers | None) -> None:
    cache.close()
    reopened = make_cache(cache.directory, embedding, shared=servers)
    hit = reopened.lookup(PARAPHRASE, SCOPE).hit
    assert hit is not None and hit.answer.sources == SOURCES


def test_deferred_vectors_are_written_on_close_and_found_after_reopen(tmp_path: Path, embedding: Any) -> None:
    c = make_cache(tmp_path / "c", embedding, flush_every=1000, flush_interval_s=3600)
    c.store(QUESTION, SCOPE, answer())
    c.store("Who founded the company?", SCOPE, answer("Ann"))
    assert c.lookup(PARAPHRASE, SCOPE).hit is not None  # searchable before any flush
    c.close()
    reopened = make_cache(tmp_path / "c", embedding)
    founder = reopened.lookup("Who was it that founded the company?", SCOPE).hit
    assert founder is not None and founder.answer.answer == "Ann"
    assert reopened.stats().entries == 2


def test_a_cache_dying_before_the_flush_loses_no_stored_answer(tmp_path: Path, embedding: Any) -> None:
    """sqlite commits each store; vectors missing from the faiss file are rebuilt from it on open."""
    dying = make_cache(tmp_path / "c", embedding, flush_every=2, flush_interval_s=3600)
    for i, q in enumerate((QUESTION, "Who founded the company?", "Where is the head office?")):
        dying.store(q, SCOPE, answer(f"answer {i}"))
    # `dying` is never closed, as if its process had died: the third vector never reached the faiss file.
    reopened = make_cache(tmp_path / "c", embedding)
    for asked, expected in ((PARAPHRASE, "answer 0"), ("Where is our head office?", "answer 2")):
        hit = reopened.lookup(asked, SCOPE).hit
        assert hit is not None and hit.answer.answer == expected
    assert reopened.stats().entries == 3


def test_entries_persist_across_processes(tmp_path: Path, embedding: Any) -> None:
    directory = tmp_path / "cache"
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from chains.cache import CachedAnswer, CacheScope, SemanticCache
        from indexing.embeddings import load_embedding
        model = load_embedding({OFFLINE_MINILM!r}, 64)
        c = SemanticCache(Path({str(directory)!r}), model, {OFFLINE_MINILM!r}, 0.85, 3600)
        c.store({QUESTION!r}, CacheScope("idx-1", "rag-model", "p1"), CachedAnswer("from the child", [], time.time()))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=tmp_path, timeout=900)
    hit = make_cache(directory, embedding).lookup(PARAPHRASE, SCOPE).hit
    assert hit is not None and hit.answer.answer == "from the child"


def test_clear_empties_every_scope_and_the_cache_keeps_working(cache: SemanticCache) -> None:
    other = CacheScope("idx-2", "m", "p")
    cache.store("Who founded the company?", other, answer("Ann"))
    assert cache.stats().entries == 2
    cache.clear()
    assert cache.stats().entries == 0
    assert cache.lookup(QUESTION, SCOPE).hit is None
    cache.store(QUESTION, SCOPE, answer("after clear"))
    hit = cache.lookup(PARAPHRASE, SCOPE).hit
    assert hit is not None and hit.answer.answer == "after clear"


def test_stats_count_hits_misses_time_saved_and_entries(cache: SemanticCache) -> None:
    cache.lookup(PARAPHRASE, SCOPE)
    cache.lookup(QUESTION, SCOPE)
    cache.lookup("Where is the head office?", SCOPE)
    cache.record_saved(1.5)
    cache.record_saved(0.25)
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries) == (2, 1, 1)
    assert stats.hit_rate == pytest.approx(2 / 3)
    assert stats.time_saved_s == pytest.approx(1.75)


def test_old_entries_are_evicted_beyond_max_entries(tmp_path: Path, embedding: Any) -> None:
    c = make_cache(tmp_path / "c", embedding, max_entries=10)
    for i in range(14):
        c.store(f"What is item number {i} in the catalogue?", SCOPE, answer(str(i)))
    assert c.stats().entries <= 10
    hit = c.lookup("What is item number 13 in the catalogue?", SCOPE).hit
    assert hit is not None and hit.answer.answer == "13"


def _scope_folder(c: SemanticCache) -> Path:
    (folder,) = (c.directory / "scopes").iterdir()
    return folder


@pytest.mark.parametrize("victim", ["sqlite.db", "faiss.index"])
def test_a_corrupt_store_warns_once_moves_aside_and_rebuilds(
    local_cache: SemanticCache, embedding: Any, victim: str, caplog: pytest.LogCaptureFixture
) -> None:
    local_cache.close()
    folder = _scope_folder(local_cache)
    (folder / victim).write_bytes(os.urandom(4096))
    reopened = make_cache(local_cache.directory, embedding)
    with caplog.at_level(logging.WARNING, logger="chains.cache"):
        assert reopened.lookup(PARAPHRASE, SCOPE).hit is None
    warnings = [r for r in caplog.records if r.name.startswith("chains.cache") and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "moved to" in warnings[0].getMessage()
    assert len(list((local_cache.directory / "corrupt").iterdir())) == 1
    reopened.store(QUESTION, SCOPE, answer("rebuilt"))
    hit = reopened.lookup(PARAPHRASE, SCOPE).hit
    assert hit is not None and hit.answer.answer == "rebuilt"
    assert reopened.stats().entries == 1


def test_a_store_failing_on_write_warns_and_recovers(
    local_cache: SemanticCache, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage over the sqlite file and the faiss index between calls of the same object."""
    local_cache.close()
    folder = _scope_folder(local_cache)
    for name in ("sqlite.db", "faiss.index"):
        (folder / name).write_bytes(b"\x00garbage" * 512)
    with caplog.at_level(logging.WARNING, logger="chains.cache"):
        local_cache.store("Who founded the company?", SCOPE, answer("Ann"))
    assert any("moved to" in r.getMessage() for r in caplog.records if r.name.startswith("chains.cache"))
    local_cache.store("Who founded the company?", SCOPE, answer("Ann"))
    hit = local_cache.lookup("Who was it that founded the company?", SCOPE).hit
    assert hit is not None and hit.answer.answer == "Ann"


class SwitchableEmbedding:
    """The real model, with a switch that makes it fail (a crashed model, not a broken store)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.broken = False

    def get_query_embedding(self, text: str) -> list[float]:
        if self.broken:
            raise RuntimeError("model crashed")
        return list(self.model.get_query_embedding(text))


def test_a_failing_embedding_skips_the_cache_without_touching_the_store(
    tmp_path: Path, embedding: Any, caplog: pytest.LogCaptureFixture
) -> None:
    model = SwitchableEmbedding(embedding)
    c = make_cache(tmp_path / "c", model)
    c.store(QUESTION, SCOPE, answer())
    model.broken = True
    with caplog.at_level(logging.WARNING, logger="chains.cache"):
        assert c.lookup("A question never asked before?", SCOPE).hit is None
        c.store("Another question never asked?", SCOPE, answer())
    assert sum("embedding the question failed" in r.getMessage() for r in caplog.records) == 2
    model.broken = False
    assert not (c.directory / "corrupt").exists()
    assert c.lookup(PARAPHRASE, SCOPE).hit is not None
    assert c.stats().entries == 1


def test_bad_input_is_rejected_and_loses_nothing(cache: SemanticCache) -> None:
    with pytest.raises(ValueError, match="non-empty question"):
        cache.lookup("   ", SCOPE)
    with pytest.raises(ValueError, match="non-empty question"):
        cache.store("", SCOPE, answer())
    with pytest.raises(ValueError, match="JSON-serialisable"):
        cache.store("Another question?", SCOPE, CachedAnswer("x", [{"score": object()}], time.time()))
    with pytest.raises(ValueError, match="seconds"):
        cache.record_saved(-1.0)
    with pytest.raises(ValueError, match="unknown cache guards"):
        SemanticCache(cache.directory, None, OFFLINE_MINILM, 0.9, 60, guards=["spelling"])  # type: ignore[list-item]
    assert cache.stats().entries == 1
    assert cache.lookup(PARAPHRASE, SCOPE).hit is not None


def test_concurrent_lookups_and_stores_from_threads(tmp_path: Path, embedding: Any) -> None:
    c = make_cache(tmp_path / "c", embedding, similarity_threshold=0.7)
    errors: list[BaseException] = []
    topics = ["invoices", "passwords", "holidays", "laptops", "parking", "badges", "printers", "salaries"]

    def worker(topic: str) -> None:
        try:
            c.store(f"Who do I contact about {topic}?", SCOPE, answer(topic))
            for _ in range(3):
                hit = c.lookup(f"Who is the contact for {topic}?", SCOPE).hit
                assert hit is not None and hit.answer.answer == topic
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in topics]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    stats = c.stats()
    assert (stats.entries, stats.hits) == (len(topics), 3 * len(topics))


def test_disabled_cache_neither_answers_nor_stores(tmp_path: Path, embedding: Any) -> None:
    c = make_cache(tmp_path / "c", embedding, enabled=False)
    c.store(QUESTION, SCOPE, answer())
    assert c.lookup(QUESTION, SCOPE).hit is None
    assert c.stats().entries == 0 and c.stats().misses == 0


def test_gptcache_cannot_install_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(subprocess, "check_call", lambda *a, **k: calls.append(a))
    with pytest.raises(InstallDisabledError, match="pip install pymilvus"):
        gptcache.utils.import_pymilvus()  # pymilvus is not installed: GPTCache would pip-install it
    from gptcache.utils import dependency_control

    with pytest.raises(InstallDisabledError):
        dependency_control.prompt_install("anything")
    assert calls == []


def test_from_settings_uses_the_cache_section(tmp_path: Path) -> None:
    settings = load_settings("test", cache={"dir": str(tmp_path / "c"), "similarity_threshold": 0.93, "ttl_s": 5})
    c = SemanticCache.from_settings(
        settings.cache,
        settings.index.embed_model,
        settings.index.embed_batch_size,
        embed_backend=settings.index.embed_backend,
    )
    c.store(QUESTION, SCOPE, answer())
    assert c.directory == tmp_path / "c" and c.stats().entries == 1
    with pytest.raises(SettingsError, match="guards"):
        load_settings("test", cache={"guards": ["spelling"]})


def scripted_verifier(reply: str | Exception) -> Any:
    """`model_verifier` over a scripted chat model: the tiny served model cannot judge paraphrases."""
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage

    class Replying(GenericFakeChatModel):
        def _generate(self, *args: Any, **kwargs: Any) -> Any:
            if isinstance(reply, Exception):
                raise reply
            return super()._generate(*args, **kwargs)

    return model_verifier(Replying(messages=iter([AIMessage(reply if isinstance(reply, str) else "")])))


@pytest.mark.parametrize(("reply", "hits"), [("Yes.", True), ("no", False), (TimeoutError("model timed out"), False)])
def test_the_model_verifier_confirms_or_vetoes_a_hit(
    tmp_path: Path, embedding: Any, reply: str | Exception, hits: bool, caplog: pytest.LogCaptureFixture
) -> None:
    c = make_cache(tmp_path / "c", embedding, verifier=scripted_verifier(reply))
    c.store(QUESTION, SCOPE, answer())
    with caplog.at_level(logging.WARNING, logger="chains.cache"):
        assert (c.lookup(PARAPHRASE, SCOPE).hit is not None) is hits
    assert any("verifier failed" in r.getMessage() for r in caplog.records) is isinstance(reply, Exception)
    assert c.stats().entries == 1 and not (c.directory / "corrupt").exists()


@pytest.mark.integration
def test_the_model_verifier_against_the_served_model(tmp_path: Path, embedding: Any, vllm_server: Any) -> None:
    """Plumbing over real HTTP: the cache follows the served model's verdict (the tiny model's is noise)."""
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(base_url=vllm_server.base_url, model=vllm_server.model, api_key="EMPTY", timeout=60)
    verifier = model_verifier(chat)
    verdict = verifier(PARAPHRASE, QUESTION)  # greedy decoding: the same verdict on every call
    assert isinstance(verdict, bool)
    c = make_cache(tmp_path / "c", embedding, verifier=verifier)
    c.store(QUESTION, SCOPE, answer())
    assert (c.lookup(PARAPHRASE, SCOPE).hit is not None) is verdict
