"""The semantic cache of whole chat turns: standalone question -> final answer + sources.

Why it looks the way it does:

* LangChain's `set_llm_cache` is never used: it keys on the serialized message list, where
  unrelated questions look alike. A turn is cached whole, keyed by the standalone question.
* One store (`chains.cache.storage`: GPTCache's sqlite + faiss) per scope, in its own folder named
  by a hash of the scope (embedding model, index version, chat model, prompt version). A re-ingest
  or a model change therefore searches an empty store instead of filtering a shared one. Every hit
  also re-checks the scope written inside the entry, in case a folder was copied around. Old
  scope folders beyond `max_scopes` are deleted, least recently used first.
* A hit needs cosine >= the threshold, a live TTL, the scope check and the guards of
  `chains.cache.guards`; the best candidate must also beat the next different cached question by
  `ambiguity_margin` (when two fit about equally well a miss is cheaper than a wrong answer). An
  optional verifier (the served model) gives a last yes/no outside the lock.
* `lookup` returns the question vector it searched with, so the caller can retrieve with it and
  hand it back to `store`: a miss embeds the question once for lookup, retrieval and store.
* Failures of the store (garbage over the sqlite file or the faiss index, disk errors, its files
  deleted while open) never reach the caller: one warning, the scope folder is moved to
  `corrupt/`, and the next call starts empty. A store locked by another connection is not
  damaged: calls miss or skip the store (one warning per episode) until the lock is gone.
* One lock serialises access to the stores (sqlite session and faiss index are not thread-safe);
  the embedding runs outside it. One process should own a cache folder.
* Shared mode (`shared=SharedServers(...)`): each scope's rows live in PostgreSQL and its vectors
  in a Chroma server collection, so every API replica answers from what any replica stored. A
  failing store is then dropped and reopened on the next call (nothing local to move aside), and
  `max_scopes` is not enforced (old scopes' tables stay until `clear()`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from chains.cache.embedding import EmbeddingError, QuestionEmbedding
from chains.cache.guards import ALL_GUARDS, GuardName, rejection
from chains.cache.storage import BUSY_TIMEOUT_S, Candidate, ScopeStore, SharedScopes, SharedServers
from chains.cache.verifier import Verifier

if TYPE_CHECKING:
    from config.settings import CacheSettings

log = logging.getLogger(__name__)

_PAYLOAD_VERSION = 1


@dataclass(frozen=True)
class CacheScope:
    """What a cached answer depends on besides the question: a change to any field empties the cache."""

    index_version: str
    model: str
    prompt_version: str
    top_k: int | None = None
    """Passages the answer was given: an answer made from 2 passages is not one made from 8."""


@dataclass
class CachedAnswer:
    """A final answer as the agent produced it."""

    answer: str
    sources: list[dict[str, Any]]  # JSON-serialisable source dicts, stored and returned as-is
    created_at: float  # time.time() when stored


@dataclass(frozen=True)
class CacheHit:
    """A lookup that found an answer, with how close the cached question was."""

    answer: CachedAnswer
    similarity: float  # cosine similarity of the matched question
    matched_question: str


@dataclass(frozen=True)
class Lookup:
    """A lookup's outcome and the embedding of the question it searched with.

    `vector` is None when the cache is off or the embedding failed; otherwise retrieval with the
    same embedding model can use it, and `store` takes it back instead of embedding again.
    """

    hit: CacheHit | None
    vector: list[float] | None


@dataclass(frozen=True)
class CacheStats:
    """Counters since this object was created (entries: live rows on disk across all scopes)."""

    hits: int
    misses: int
    hit_rate: float
    time_saved_s: float
    entries: int


class SemanticCache:
    """Turn-level semantic cache; safe to share between threads.

    lookup/store never raise because of the store: on trouble they log one warning, move the
    scope's store aside and carry on (a lookup then misses). Bad arguments raise ValueError.
    """

    def __init__(
        self,
        directory: Path,
        embedding: Any,
        embed_model_name: str,
        similarity_threshold: float,
        ttl_s: float,
        *,
        enabled: bool = True,
        guards: Collection[GuardName] = ALL_GUARDS,
        top_k: int = 5,
        max_entries: int = 10_000,
        max_scopes: int = 8,
        ambiguity_margin: float = 0.02,
        verifier: Verifier | None = None,
        flush_every: int = 64,
        flush_interval_s: float = 30.0,
        clock: Callable[[], float] = time.time,
        shared: SharedServers | None = None,
    ) -> None:
        if not 0.0 < similarity_threshold <= 1.0:
            raise ValueError(f"similarity_threshold must be in (0, 1], got {similarity_threshold}")
        if not 0.0 <= ambiguity_margin < similarity_threshold:
            raise ValueError(f"ambiguity_margin must be in [0, threshold), got {ambiguity_margin}")
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        if flush_every < 1 or flush_interval_s < 0:
            raise ValueError(f"need flush_every >= 1 and flush_interval_s >= 0, got {flush_every}, {flush_interval_s}")
        unknown = set(guards) - set(ALL_GUARDS)
        if unknown:
            raise ValueError(f"unknown cache guards {sorted(unknown)}; known: {', '.join(ALL_GUARDS)}")
        self.directory = Path(directory)
        self.enabled = enabled
        self._embed = QuestionEmbedding(embedding)
        self.embed_model_name = embed_model_name
        self._threshold = similarity_threshold
        self._margin = ambiguity_margin
        # Candidates down to `margin` below the threshold are read so a hit's runner-up is seen too.
        self._floor = similarity_threshold - ambiguity_margin
        self._ttl_s = ttl_s
        self._guards = tuple(guards)
        self._top_k = top_k
        self._max_entries = max_entries
        self._max_scopes = max_scopes
        self._verifier = verifier
        self._flush_every = flush_every
        self._flush_interval_s = flush_interval_s
        self._clock = clock
        self._lock = threading.RLock()
        self._stores: dict[str, ScopeStore] = {}
        self._shared = shared
        self._chroma: Any = None  # shared mode: the Chroma server client and the scope registry,
        self._scopes: SharedScopes | None = None  # opened on first use
        self._locked: set[str] = set()  # scopes whose store was found locked (warned once)
        self._hits = 0
        self._misses = 0
        self._time_saved_s = 0.0

    @classmethod
    def from_settings(
        cls,
        settings: CacheSettings,
        embed_model_name: str,
        embed_batch_size: int = 64,
        verifier: Verifier | None = None,
        embed_backend: str = "onnx",
    ) -> SemanticCache:
        """Build from the `cache` settings section, with the index's embedding model and backend
        (so a lookup's vector can serve retrieval; a new backend means a new index, so a new scope).

        Pass `verifier=model_verifier(chat_model)` when `settings.verify_with_model` is on.
        """
        from config.settings import sqlalchemy_url
        from indexing.embeddings import load_embedding

        shared = None
        if settings.state_url is not None:
            url = sqlalchemy_url(settings.state_url.get_secret_value())
            shared = SharedServers(url, settings.chroma_host, settings.chroma_port, settings.collection_prefix)
        return cls(
            settings.dir,
            load_embedding(embed_model_name, embed_batch_size, embed_backend),
            embed_model_name,
            settings.similarity_threshold,
            settings.ttl_s,
            enabled=settings.enabled,
            guards=settings.guards,
            top_k=settings.top_k,
            max_entries=settings.max_entries,
            max_scopes=settings.max_scopes,
            ambiguity_margin=settings.ambiguity_margin,
            verifier=verifier,
            shared=shared,
        )

    def lookup(self, question: str, scope: CacheScope) -> Lookup:
        """The cached answer to this question (or a paraphrase of it) in this scope, if any."""
        question = _clean_question(question)
        if not self.enabled:
            return Lookup(None, None)
        try:
            vector = self._embed(question)  # outside the lock: the slow part, and thread-safe
        except EmbeddingError as exc:
            log.warning("semantic cache lookup skipped: %s", exc)
            with self._lock:
                self._misses += 1
            return Lookup(None, None)
        with self._lock:
            hit = self._guarded(scope, "lookup", lambda store: self._lookup(store, question, vector, scope))
        if hit is not None and self._verifier is not None:
            hit = self._verified(question, hit)  # outside the lock: it may be a model call
        with self._lock:
            if hit is None:
                self._misses += 1
            else:
                self._hits += 1
        return Lookup(hit, vector.tolist())

    def store(
        self, question: str, scope: CacheScope, answer: CachedAnswer, *, vector: Sequence[float] | None = None
    ) -> None:
        """Remember the answer to this question in this scope.

        `vector`: the question's embedding from `lookup(question).vector`, to skip embedding it again.
        """
        question = _clean_question(question)
        payload = _encode(question, _scope_dict(scope), answer)
        if vector is not None and len(vector) != self._embed.dimension:
            raise ValueError(f"vector has {len(vector)} dimensions, the cache's embedding {self._embed.dimension}")
        if not self.enabled:
            return
        try:
            array = self._embed(question) if vector is None else np.asarray(vector, dtype="float32")
        except EmbeddingError as exc:
            log.warning("semantic cache store skipped: %s", exc)
            return
        with self._lock:
            self._guarded(scope, "store", lambda store: store.add(question, payload, array))

    def record_saved(self, seconds: float) -> None:
        """Add the time a hit saved (the caller's estimate of the uncached turn latency)."""
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"saved time must be a finite number of seconds >= 0, got {seconds}")
        with self._lock:
            self._time_saved_s += seconds

    def flush(self) -> None:
        """Write every open store's pending vectors to disk now."""
        with self._lock:
            for key, store in list(self._stores.items()):
                try:
                    store.flush()
                except Exception as exc:
                    self._quarantine(key, "flush", exc)

    def clear(self) -> None:
        """Drop every cached answer of every scope, and quarantined stores (counters keep running)."""
        with self._lock:
            self._close_all()
            if self._shared is not None:
                chroma, scopes = self._shared_parts()
                scopes.drop_all(chroma)
            for sub in ("scopes", "corrupt"):
                shutil.rmtree(self.directory / sub, ignore_errors=True)

    def stats(self) -> CacheStats:
        with self._lock:
            asked = self._hits + self._misses
            return CacheStats(
                hits=self._hits,
                misses=self._misses,
                hit_rate=self._hits / asked if asked else 0.0,
                time_saved_s=self._time_saved_s,
                entries=self._count_entries(),
            )

    def close(self) -> None:
        """Flush and release every open store. Without it the unflushed vectors are rebuilt from
        sqlite at the next open (nothing committed is lost)."""
        with self._lock:
            self._close_all()
            if self._scopes is not None:
                self._scopes.close()
            self._chroma, self._scopes = None, None

    # -- internals -------------------------------------------------------------------------

    def _lookup(self, store: ScopeStore, question: str, vector: np.ndarray, scope: CacheScope) -> CacheHit | None:
        now, wanted = self._clock(), _scope_dict(scope)
        candidates = store.search(vector, self._floor)
        passed = [(c, p) for c in candidates if (p := self._acceptable(question, c, wanted, now)) is not None]
        if not passed or passed[0][0].cosine < self._threshold:
            return None
        (best, payload), rivals = passed[0], [c.cosine for c, _ in passed[1:] if c.question != passed[0][0].question]
        if rivals and best.cosine - rivals[0] < self._margin:
            return None  # two different cached questions fit about equally well: not a safe answer
        store.touch(best.row_id)
        cached = CachedAnswer(payload["answer"], payload["sources"], payload["created_at"])
        return CacheHit(cached, similarity=best.cosine, matched_question=payload["question"])

    def _acceptable(
        self, question: str, candidate: Candidate, scope: dict[str, str], now: float
    ) -> dict[str, Any] | None:
        """The candidate's payload if scope, TTL and guards allow answering with it."""
        payload = _decode(candidate.answer)
        if payload is None or payload["scope"] != scope:
            return None
        if now - payload["created_at"] > self._ttl_s:
            return None
        if rejection(question, candidate.question, self._guards):
            return None
        return payload

    def _verified(self, question: str, hit: CacheHit) -> CacheHit | None:
        assert self._verifier is not None
        try:
            same = self._verifier(question, hit.matched_question)
        except Exception as exc:  # no second opinion: do not risk a wrong answer
            log.warning("semantic cache verifier failed (%s: %s); treating the hit as a miss", type(exc).__name__, exc)
            return None
        return hit if same else None

    def _guarded(self, scope: CacheScope, action: str, call: Callable[[ScopeStore], Any]) -> Any:
        """Run `call` on the scope's store; turn any store failure into one warning and a rebuild."""
        key = self._scope_key(scope)
        try:
            store = self._open(key, scope)
            store.ensure_present()
            result = call(store)
        except Exception as exc:
            if _is_locked(exc):
                self._locked_out(key, action, exc)
            else:
                self._quarantine(key, action, exc)
            return None
        if action == "store" and key in self._locked:  # a write went through: the lock is gone
            self._locked.discard(key)
            log.info("semantic cache store is free again")
        return result

    def _locked_out(self, key: str, action: str, exc: Exception) -> None:
        """Another connection holds the store's lock: skip this call, keep the store (nothing is wrong with it)."""
        if key in self._locked:
            log.debug("semantic cache %s skipped: store still locked", action)
            return
        self._locked.add(key)
        log.warning(
            "semantic cache %s skipped: another connection has held the store's lock for over %g s (%s); "
            "answering uncached until it is released",
            action,
            BUSY_TIMEOUT_S,
            _first_line(exc),
        )

    def _open(self, key: str, scope: CacheScope) -> ScopeStore:
        store = self._stores.get(key)
        if store is not None:
            return store
        options: dict[str, Any] = {
            "top_k": self._top_k,
            "max_entries": self._max_entries,
            "flush_every": self._flush_every,
            "flush_interval_s": self._flush_interval_s,
        }
        if self._shared is not None:
            chroma, scopes = self._shared_parts()
            store = ScopeStore.shared(self._shared, chroma, key, scopes.collection(key), **options)
            self._stores[key] = store
            return store
        path = self.directory / "scopes" / key
        fresh = not path.exists()
        path.mkdir(parents=True, exist_ok=True)
        (path / "scope.json").write_text(
            json.dumps({"embed_model": self.embed_model_name, **asdict(scope)}, indent=1), encoding="utf-8"
        )
        if fresh:
            self._prune_scopes(keep=key)
        store = ScopeStore.local(path, self._embed.dimension, **options)
        self._stores[key] = store
        return store

    def _quarantine(self, key: str, action: str, exc: Exception) -> None:
        """Move a failing scope store aside so the next call starts an empty one."""
        store = self._stores.pop(key, None)
        if store is not None:
            try:
                store.abandon()
            except Exception:  # releasing a broken store may fail too; it is being discarded
                log.debug("releasing a broken cache store failed", exc_info=True)
        self._locked.discard(key)
        if self._shared is not None:
            log.warning(
                "semantic cache %s failed (%s: %s); answering uncached, the store is reopened on the next call",
                action,
                type(exc).__name__,
                exc,
            )
            return
        source = self.directory / "scopes" / key
        target = self.directory / "corrupt" / f"{key}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        try:
            moved = source.exists()
            if moved:
                target.parent.mkdir(parents=True, exist_ok=True)
                source.rename(target)
            log.warning(
                "semantic cache %s failed (%s: %s); %s, continuing with an empty cache",
                action,
                type(exc).__name__,
                _first_line(exc),
                f"store moved to {target}" if moved else "its files are gone",
            )
        except OSError as move_exc:
            self.enabled = False
            log.error(
                "semantic cache %s failed (%s: %s) and the store cannot be moved aside (%s); cache disabled",
                action,
                type(exc).__name__,
                exc,
                move_exc,
            )

    def _prune_scopes(self, keep: str) -> None:
        """Delete the least recently opened scope folders beyond `max_scopes`."""
        folders = [p for p in (self.directory / "scopes").iterdir() if p.is_dir() and p.name != keep]
        folders = [p for p in folders if p.name not in self._stores]
        folders.sort(key=lambda p: _mtime(p / "scope.json"), reverse=True)
        for old in folders[max(0, self._max_scopes - 1) :]:
            shutil.rmtree(old, ignore_errors=True)

    def _close_all(self) -> None:
        for store in self._stores.values():
            try:
                store.close()
            except Exception as exc:  # a broken store is about to be dropped anyway
                log.warning("semantic cache: closing %s failed (%s: %s)", store.path, type(exc).__name__, exc)
        self._stores.clear()

    def _shared_parts(self) -> tuple[Any, SharedScopes]:
        if self._chroma is None or self._scopes is None:
            import chromadb
            from chromadb.config import Settings as ChromaSettings

            assert self._shared is not None
            self._chroma = chromadb.HttpClient(
                host=self._shared.chroma_host,
                port=self._shared.chroma_port,
                settings=ChromaSettings(anonymized_telemetry=False),
            )
            self._scopes = SharedScopes(self._shared)
        return self._chroma, self._scopes

    def _count_entries(self) -> int:
        if self._shared is not None:
            return self._shared_parts()[1].entries()
        total = 0
        scopes = self.directory / "scopes"
        for db in scopes.glob("*/sqlite.db") if scopes.exists() else []:
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                    total += conn.execute("SELECT count(*) FROM gptcache_question WHERE deleted = 0").fetchone()[0]
            except sqlite3.Error:
                continue  # a corrupt store counts as empty; the next access quarantines it
        return total

    def _scope_key(self, scope: CacheScope) -> str:
        blob = json.dumps({"embed_model": self.embed_model_name, **asdict(scope)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _is_locked(exc: BaseException) -> bool:
    """sqlite's "database is locked" (SQLAlchemy wraps it; the original is `orig`)."""
    orig = getattr(exc, "orig", exc)
    return isinstance(orig, sqlite3.OperationalError) and "locked" in str(orig)


def _first_line(exc: BaseException) -> str:
    """The error without SQLAlchemy's appended SQL and parameters (question text stays out of logs)."""
    text = str(getattr(exc, "orig", exc)) or str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def _scope_dict(scope: CacheScope) -> dict[str, str]:
    return {k: str(v) for k, v in asdict(scope).items()}


def _clean_question(question: str) -> str:
    if not isinstance(question, str) or not question.strip():
        raise ValueError("the cache needs a non-empty question")
    return question.strip()


def _encode(question: str, scope: dict[str, str], answer: CachedAnswer) -> str:
    try:
        return json.dumps(
            {
                "v": _PAYLOAD_VERSION,
                "question": question,
                "scope": scope,
                "answer": answer.answer,
                "sources": answer.sources,
                "created_at": float(answer.created_at),
            },
            ensure_ascii=False,
            allow_nan=False,
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"cached answer must be JSON-serialisable (answer text, source dicts): {exc}") from exc


def _decode(raw: Any) -> dict[str, Any] | None:
    """The stored entry, or None for anything that is not one of ours."""
    try:
        payload = json.loads(raw)
    except (TypeError, ValueError):
        return None
    if not isinstance(payload, dict) or payload.get("v") != _PAYLOAD_VERSION:
        return None
    return payload


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
