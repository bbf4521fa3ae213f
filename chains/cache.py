"""Semantic cache of whole chat turns: standalone question -> final answer + sources, on GPTCache.

Why it looks the way it does:

* GPTCache is used through its own `Cache` object: `gptcache.adapter.api.get` for lookups and
  `Cache.import_data` for stores (`api.put` swallows storage errors into a log line, and a corrupt
  store must be noticed so it can be rebuilt). LangChain's `set_llm_cache` is never used: it keys on
  the serialized message list, where unrelated questions look alike.
* One GPTCache store (sqlite + faiss) per scope, in its own folder named by a hash of the scope
  (embedding model, index version, chat model, prompt version). A re-ingest or a model change
  therefore searches an empty store instead of filtering a shared one: an old answer cannot be
  returned, and old entries cannot crowd the current scope's entries out of the top-k either.
  Every hit also re-checks the scope written inside the entry, in case a folder was copied around.
  Old scope folders beyond `max_scopes` are deleted, least recently used first.
* GPTCache's `SearchDistanceEvaluation` scores squared L2 distance; on normalized vectors that is
  `2 - 2 cos`, so a "0.8" there means cosine 0.6. Our evaluation converts to cosine and applies the
  configured cosine threshold, the TTL, the scope check and the guards of `chains.cache_guards`;
  a candidate failing any of them scores 0 and is not a hit. The best candidate must also beat
  the next different cached question by `ambiguity_margin`: when two cached questions fit about
  equally well the cache cannot tell which answer is meant, and a miss is cheaper than a wrong
  answer. An optional verifier (the served model) gives a last yes/no outside the lock.
* GPTCache runs `pip install` when an optional dependency is missing; importing this module makes
  that helper raise instead. `init_similar_cache_from_config` (unsafe YAML) is never called.
* Failures of the store (garbage over the sqlite file or the faiss index, disk errors) never reach
  the caller: one warning, the scope folder is moved to `corrupt/`, and the next call starts empty.
* One lock serialises access to GPTCache (its sqlite session and faiss index are not thread-safe);
  a hit costs one MiniLM embedding and a search, so callers running in threads queue briefly.
  One process should own a cache folder (faiss is rewritten whole on each store).
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
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gptcache.utils
import numpy as np
from gptcache import Cache, Config
from gptcache.embedding.base import BaseEmbedding
from gptcache.similarity_evaluation import SimilarityEvaluation
from gptcache.utils import dependency_control

from chains.cache_guards import ALL_GUARDS, GuardName, rejection

if TYPE_CHECKING:
    from config.settings import CacheSettings

log = logging.getLogger(__name__)

_PAYLOAD_VERSION = 1


class InstallDisabledError(RuntimeError):
    """GPTCache asked to pip-install a package at run time; we never let it change the environment."""


def _refuse_install(package: str, warn: bool = False) -> None:
    raise InstallDisabledError(
        f"GPTCache tried to run 'pip install {package}'; run-time installs are disabled. "
        "Add the package to the project's dependencies instead."
    )


def disable_runtime_installs() -> None:
    """Make GPTCache's dependency helper raise instead of installing (idempotent)."""
    gptcache.utils.prompt_install = _refuse_install
    dependency_control.prompt_install = _refuse_install


# Before any GPTCache module that checks its dependencies (faiss, sqlalchemy) is imported below.
disable_runtime_installs()


@dataclass(frozen=True)
class CacheScope:
    """What a cached answer depends on besides the question: a change to any field empties the cache."""

    index_version: str
    model: str
    prompt_version: str


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
class CacheStats:
    """Counters since this object was created (entries: live rows on disk across all scopes)."""

    hits: int
    misses: int
    hit_rate: float
    time_saved_s: float
    entries: int


Verifier = Callable[[str, str], bool]
"""Second opinion on a hit: (asked question, cached question) -> same question?"""

_VERIFY_PROMPT = (
    "Do these two questions ask for exactly the same information, so that one answer is correct for both? "
    "Different numbers, dates, names, negations or opposites mean no. Reply with yes or no only.\n"
    "Question A: {a}\nQuestion B: {b}"
)


def model_verifier(chat_model: Any) -> Verifier:
    """A verifier asking the served chat model (any LangChain chat model) for a yes/no.

    Costs one short model call per hit, which is why `cache.verify_with_model` is off by default;
    worth it when a capable model serves and a wrong answer costs more than a regenerated one.
    """
    yes_no = chat_model.bind(max_tokens=3, temperature=0)

    def verify(asked: str, cached: str) -> bool:
        reply = yes_no.invoke(_VERIFY_PROMPT.format(a=asked, b=cached))
        return str(reply.content).strip().lower().startswith("yes")

    return verify


class EmbeddingError(RuntimeError):
    """The embedding model failed: not a store problem, so the store is left alone."""


class QuestionEmbedding(BaseEmbedding):
    """The project's MiniLM as GPTCache's `embedding_func`, remembering recent questions.

    A miss embeds the question for the lookup, again for the store after the answer, and the
    retriever needs it too: the small memo makes the second and third free.
    """

    def __init__(self, model: Any, memo_size: int = 256) -> None:
        self._model = model
        self._memo: dict[str, np.ndarray] = {}
        self._memo_size = memo_size
        self._dimension = len(self._embed("dimension probe"))

    def to_embeddings(self, data: str, **_: Any) -> np.ndarray:
        vector = self._memo.get(data)
        if vector is None:
            vector = self._embed(data)
            if len(self._memo) >= self._memo_size:
                self._memo.pop(next(iter(self._memo)))
            self._memo[data] = vector
        return vector

    def remembered(self, text: str) -> np.ndarray | None:
        """The memoised vector, never a new embedding (a single dict read: safe without the lock)."""
        return self._memo.get(text)

    @property
    def dimension(self) -> int:
        return self._dimension

    def _embed(self, text: str) -> np.ndarray:
        try:
            vector = np.asarray(self._model.get_query_embedding(text), dtype="float32")
        except Exception as exc:
            raise EmbeddingError(f"embedding the question failed: {exc}") from exc
        vector.setflags(write=False)
        return vector


class _Evaluation(SimilarityEvaluation):
    """Cosine from faiss's squared L2, vetoed by scope, TTL and the guards (range 0..1).

    `floor` is the threshold minus the ambiguity margin: candidates above it are scored so the
    caller can compare the best one with its runner-up; the threshold itself is applied there.
    """

    def __init__(
        self,
        scope: dict[str, str],
        floor: float,
        ttl_s: float,
        guards: Collection[GuardName],
        clock: Callable[[], float],
    ) -> None:
        self._scope = scope
        self._floor = floor
        self._ttl_s = ttl_s
        self._guards = tuple(guards)
        self._clock = clock

    def evaluation(self, src_dict: dict[str, Any], cache_dict: dict[str, Any], **_: Any) -> float:
        distance = float(cache_dict["search_result"][0])
        cosine = min(1.0, max(0.0, 1.0 - distance / 2.0))
        if cosine < self._floor:
            return 0.0
        payload = _decode(cache_dict["answer"])
        if payload is None or payload["scope"] != self._scope:
            return 0.0
        if self._clock() - payload["created_at"] > self._ttl_s:
            return 0.0
        if rejection(src_dict["question"], str(cache_dict["question"]), self._guards):
            return 0.0
        return cosine

    def range(self) -> tuple[float, float]:
        return 0.0, 1.0


@dataclass
class _Store:
    """One scope's open GPTCache (sqlite + faiss in `path`)."""

    path: Path
    cache: Cache

    def close(self) -> None:
        """Release files; later flushes (GPTCache's atexit hook) become no-ops."""
        manager = self.cache.data_manager
        manager.v.detach()
        manager.s.close()


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
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0.0 < similarity_threshold <= 1.0:
            raise ValueError(f"similarity_threshold must be in (0, 1], got {similarity_threshold}")
        if not 0.0 <= ambiguity_margin < similarity_threshold:
            raise ValueError(f"ambiguity_margin must be in [0, threshold), got {ambiguity_margin}")
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        unknown = set(guards) - set(ALL_GUARDS)
        if unknown:
            raise ValueError(f"unknown cache guards {sorted(unknown)}; known: {', '.join(ALL_GUARDS)}")
        self.directory = Path(directory)
        self.enabled = enabled
        self._embedding = QuestionEmbedding(embedding)
        self.embed_model_name = embed_model_name
        self._threshold = similarity_threshold
        self._margin = ambiguity_margin
        # GPTCache's own cut-off sits `margin` lower so the runner-up of a hit is seen too.
        self._floor = similarity_threshold - ambiguity_margin
        self._ttl_s = ttl_s
        self._guards = tuple(guards)
        self._top_k = top_k
        self._max_entries = max_entries
        self._max_scopes = max_scopes
        self._verifier = verifier
        self._clock = clock
        self._lock = threading.RLock()
        self._stores: dict[str, _Store] = {}
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
    ) -> SemanticCache:
        """Build from the `cache` settings section, with the index's embedding model.

        Pass `verifier=model_verifier(chat_model)` when `settings.verify_with_model` is on.
        """
        from config.settings import REPO_ROOT
        from indexing.embeddings import load_embedding

        directory = settings.dir if settings.dir.is_absolute() else REPO_ROOT / settings.dir
        return cls(
            directory,
            load_embedding(embed_model_name, embed_batch_size),
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
        )

    def lookup(self, question: str, scope: CacheScope) -> CacheHit | None:
        """The cached answer to this question (or a paraphrase of it) in this scope, if any."""
        question = _clean_question(question)
        if not self.enabled:
            return None
        with self._lock:
            hit = self._guarded(scope, "lookup", lambda store: self._lookup(store, question))
        if hit is not None and self._verifier is not None:
            hit = self._verified(question, hit)  # outside the lock: it may be a model call
        with self._lock:
            if hit is None:
                self._misses += 1
            else:
                self._hits += 1
        return hit

    def question_vector(self, question: str) -> list[float] | None:
        """The question's embedding from its last lookup, if still remembered: retrieval with the
        same embedding model reuses it instead of embedding the question a second time. Takes no
        lock: it runs on the agent's event loop, which must not wait for other turns' stores."""
        vector = self._embedding.remembered(_clean_question(question))
        return None if vector is None else vector.tolist()

    def store(self, question: str, scope: CacheScope, answer: CachedAnswer) -> None:
        """Remember the answer to this question in this scope."""
        question = _clean_question(question)
        payload = _encode(question, _scope_dict(scope), answer)
        if not self.enabled:
            return
        with self._lock:
            self._guarded(scope, "store", lambda store: self._store(store, question, payload))

    def record_saved(self, seconds: float) -> None:
        """Add the time a hit saved (the caller's estimate of the uncached turn latency)."""
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"saved time must be a finite number of seconds >= 0, got {seconds}")
        with self._lock:
            self._time_saved_s += seconds

    def clear(self) -> None:
        """Drop every cached answer of every scope, and quarantined stores (counters keep running)."""
        with self._lock:
            self._close_all()
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
        """Flush and release every open store (also done at interpreter exit)."""
        with self._lock:
            self._close_all()

    # -- internals -------------------------------------------------------------------------

    def _lookup(self, store: _Store, question: str) -> CacheHit | None:
        from gptcache.adapter.api import get

        scored: list[tuple[str, float]] = []  # every candidate that passed, best first
        raw = get(question, cache_obj=store.cache, hit_callback=scored.extend)
        payload = _decode(raw) if raw is not None else None
        if payload is None or not scored or scored[0][1] < self._threshold:
            return None
        best_question, best = scored[0]
        rivals = [sim for q, sim in scored[1:] if q != best_question]
        if rivals and best - rivals[0] < self._margin:
            return None  # two different cached questions fit about equally well: not a safe answer
        cached = CachedAnswer(payload["answer"], payload["sources"], payload["created_at"])
        return CacheHit(cached, similarity=float(best), matched_question=payload["question"])

    def _verified(self, question: str, hit: CacheHit) -> CacheHit | None:
        assert self._verifier is not None
        try:
            same = self._verifier(question, hit.matched_question)
        except Exception as exc:  # no second opinion: do not risk a wrong answer
            log.warning("semantic cache verifier failed (%s: %s); treating the hit as a miss", type(exc).__name__, exc)
            return None
        return hit if same else None

    def _store(self, store: _Store, question: str, payload: str) -> None:
        store.cache.import_data([question], [payload])
        store.cache.flush()

    def _guarded(self, scope: CacheScope, action: str, call: Callable[[_Store], Any]) -> Any:
        """Run `call` on the scope's store; turn any store failure into one warning and a rebuild."""
        key = self._scope_key(scope)
        try:
            return call(self._open(key, scope))
        except EmbeddingError as exc:
            log.warning("semantic cache %s skipped: %s", action, exc)
        except Exception as exc:
            self._quarantine(key, action, exc)
        return None

    def _open(self, key: str, scope: CacheScope) -> _Store:
        store = self._stores.get(key)
        if store is not None:
            return store
        from gptcache.manager import get_data_manager
        from gptcache.processor.post import first
        from gptcache.processor.pre import get_prompt

        path = self.directory / "scopes" / key
        fresh = not path.exists()
        path.mkdir(parents=True, exist_ok=True)
        (path / "scope.json").write_text(
            json.dumps({"embed_model": self.embed_model_name, **asdict(scope)}, indent=1), encoding="utf-8"
        )
        if fresh:
            self._prune_scopes(keep=key)

        manager = get_data_manager(
            _sqlite_storage(path / "sqlite.db"),
            _faiss_index(str(path / "faiss.index"), self._embedding.dimension, self._top_k, self._floor),
            max_size=self._max_entries,
            clean_size=max(1, self._max_entries // 10),
        )
        cache = Cache()
        cache.init(
            pre_embedding_func=get_prompt,
            embedding_func=self._embedding.to_embeddings,
            data_manager=manager,
            similarity_evaluation=_Evaluation(_scope_dict(scope), self._floor, self._ttl_s, self._guards, self._clock),
            post_process_messages_func=first,
            config=Config(similarity_threshold=self._floor, disable_report=True),
        )
        store = _Store(path, cache)
        self._stores[key] = store
        return store

    def _quarantine(self, key: str, action: str, exc: Exception) -> None:
        """Move a failing scope store aside so the next call starts an empty one."""
        store = self._stores.pop(key, None)
        if store is not None:
            try:
                store.close()
            except Exception:  # closing a broken store may fail too; it is being discarded
                log.debug("closing a broken cache store failed", exc_info=True)
        source = self.directory / "scopes" / key
        target = self.directory / "corrupt" / f"{key}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        try:
            if source.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                source.rename(target)
            log.warning(
                "semantic cache %s failed (%s: %s); store moved to %s, continuing with an empty cache",
                action,
                type(exc).__name__,
                exc,
                target,
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
                store.cache.flush()
                store.close()
            except Exception as exc:  # a broken store is about to be dropped anyway
                log.warning("semantic cache: closing %s failed (%s: %s)", store.path, type(exc).__name__, exc)
        self._stores.clear()

    def _count_entries(self) -> int:
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


def _sqlite_storage(db: Path) -> Any:
    """GPTCache's SQL storage on a WAL-mode sqlite file.

    Each cache read also updates a last-access column and commits; in the default journal mode
    every such commit waits for fsync (about 2 ms, several per lookup). WAL with synchronous=NORMAL
    makes them cheap and can only lose the last commits on power loss, which a cache can afford.
    """
    from gptcache.manager.scalar_data.sql_storage import SQLStorage
    from sqlalchemy import event

    def pragmas(conn: Any, _record: Any) -> None:
        cursor = conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    class _SQLite(SQLStorage):
        def __init__(self) -> None:
            super().__init__("sqlite", f"sqlite:///{db}")
            event.listen(self._engine, "connect", pragmas)
            self._engine.dispose()  # the connection that created the tables predates the pragmas

        def close(self) -> None:
            self._engine.dispose()

    return _SQLite()


def _faiss_index(path: str, dimension: int, top_k: int, floor: float) -> Any:
    """GPTCache's faiss store with atomic flushes and a distance cut-off matching the cosine floor."""
    import faiss
    from gptcache.manager.vector_data.faiss import Faiss

    class _Faiss(Faiss):
        def __init__(self) -> None:
            super().__init__(path, dimension, top_k)
            if self._index.d != dimension:
                raise ValueError(f"faiss index {path} has dimension {self._index.d}, expected {dimension}")
            # Squared L2 between normalized vectors is 2 - 2 cos: skip fetching rows that cannot hit.
            self._max_distance = 2.0 * (1.0 - floor) + 1e-4
            self._detached = False

        def search(self, data: np.ndarray, top_k: int = -1) -> list[tuple[float, int]] | None:
            found = super().search(data, top_k)
            return [(d, i) for d, i in found if d <= self._max_distance and i >= 0] if found else found

        def flush(self) -> None:
            if self._detached:
                return
            tmp = f"{self._index_file_path}.tmp"
            faiss.write_index(self._index, tmp)
            os.replace(tmp, self._index_file_path)

        def detach(self) -> None:
            self._detached = True

    return _Faiss()


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
