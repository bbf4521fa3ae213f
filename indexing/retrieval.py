"""Hybrid retrieval: dense (Chroma) and BM25 candidates, fused by score (default) or by rank.

A retriever follows the index: every call checks the manifest (a `stat` of the file in embedded
mode, one PostgreSQL query in shared mode), and when another process or host has re-ingested
(new version), it reopens Chroma and loads the new BM25 before answering. Embedded Chroma caches
its vector index per process, so reopening is the only way to see another writer's chunks; all
retrievers of one index in a process share one view.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np

from config.settings import IndexSettings
from indexing.bm25 import Bm25Index
from indexing.errors import EmbeddingMismatchError, IndexingError, IndexNotFoundError
from indexing.manifest import Manifest
from indexing.metadata import CHUNK, HEADING, PAGE, SOURCE, TITLE, chroma_where
from indexing.records import IndexRecords
from indexing.store import close_client, collection_ids, existing_collection, open_client

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection
    from llama_index.core.base.embeddings.base import BaseEmbedding

Mode = Literal["hybrid", "dense", "bm25"]
MODES: tuple[str, ...] = get_args(Mode)


@dataclass(frozen=True)
class Passage:
    """One retrieved chunk, free of LlamaIndex bookkeeping, ready for a prompt and a citation."""

    node_id: str
    text: str
    source: str
    """File path as ingested (relative to the docs root when under it)."""
    title: str | None
    page: int | None
    """1-based for PDFs, else None."""
    heading: str | None
    """Heading path, e.g. "Install > GPU"."""
    chunk: int
    """0-based chunk number within its document."""
    score: float
    """Higher is better: the fused score in hybrid mode, cosine similarity in dense, BM25 score in bm25."""


@dataclass(frozen=True)
class _View:
    manifest: Manifest
    client: ClientAPI
    collection: Collection
    bm25: Bm25Index


class _SharedIndex:
    """One process-wide view of an index, swapped for a new one when the manifest changes."""

    def __init__(self, settings: IndexSettings, records: IndexRecords, backend: str, key: tuple[Any, ...]) -> None:
        self.settings = settings
        self.records = records
        self.layout = records.layout
        self.backend = backend
        self.key = key
        self.users = 0
        """Open retrievers on this view; the last one to close releases it."""
        self.lock = threading.RLock()
        self._stamp: object | None = None
        self._view: _View | None = None

    def release(self) -> None:
        """Close Chroma's client (its file handles in embedded mode), the docstore, and drop the loaded BM25."""
        with self.lock:
            if self._view is not None:
                close_client(self._view.client)
            self._view, self._stamp = None, None
            self.records.close()

    def current(self) -> _View:
        """The view for the manifest now (one `stat` or query when nothing changed). Hold `lock`."""
        stamp = self.records.manifest_stamp()
        if self._view is not None and stamp is not None and stamp == self._stamp:
            return self._view
        manifest = None if stamp is None else self.records.manifest_for_model(self.settings.embed_model, self.backend)
        if manifest is None:
            raise IndexNotFoundError(f"{self.records.description} is gone (no manifest); re-run the ingest")
        if self._view is not None and manifest.version == self._view.manifest.version:
            self._view = _View(manifest, self._view.client, self._view.collection, self._view.bm25)
        else:
            self._view = self._open(manifest)
        self._stamp = stamp
        return self._view

    def _open(self, manifest: Manifest) -> _View:
        old = self._view
        if old is not None and self.settings.chroma_mode == "http":
            client = old.client  # the server always serves the current content
        else:
            if old is not None:
                close_client(old.client)  # drops this process's cached vector index of the old version
            client = open_client(self.settings, self.layout)
        collection = existing_collection(client, self.settings.collection, self.records.name)
        return _View(manifest, client, collection, self.records.bm25(manifest))


_shared: dict[tuple[Any, ...], _SharedIndex] = {}
_shared_lock = threading.Lock()


def _acquire_shared(settings: IndexSettings, records: IndexRecords, backend: str) -> _SharedIndex:
    key = (
        str(records.layout.root.resolve()),
        settings.collection,
        settings.embed_model,
        backend,
        settings.chroma_mode,
        settings.chroma_host,
        settings.chroma_port,
    )
    with _shared_lock:
        if key not in _shared:
            _shared[key] = _SharedIndex(settings, records, backend, key)
        else:
            records.close()
        shared = _shared[key]
        shared.users += 1
        return shared


def _release_shared(shared: _SharedIndex) -> None:
    with _shared_lock:
        shared.users -= 1
        if shared.users > 0:
            return
        del _shared[shared.key]
    shared.release()


class HybridRetriever:
    """Dense + BM25 retrieval over one index, fused as `index.fusion` says (convex scores or RRF).

    `close()` it (or use it as a context manager) when done: the last retriever of an index in
    the process releases Chroma's client and the loaded BM25.
    """

    def __init__(self, settings: IndexSettings, shared: _SharedIndex, embed_model: BaseEmbedding) -> None:
        self.settings = settings
        self._shared = shared
        self._embed = embed_model
        self._closed = False
        self._close_lock = threading.Lock()

    def close(self) -> None:
        """Release this retriever's hold on the index (idempotent); later calls raise IndexingError."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        _release_shared(self._shared)

    def __enter__(self) -> HybridRetriever:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _current(self) -> _View:
        """The current view of the index. Hold `self._shared.lock`."""
        if self._closed:
            raise IndexingError("this retriever is closed; open another with open_retriever()")
        return self._shared.current()

    @property
    def manifest(self) -> Manifest:
        with self._shared.lock:
            return self._current().manifest

    @property
    def index_version(self) -> str:
        """Changes exactly when the indexed content changes (re-checked on every access)."""
        return self.manifest.version

    def retrieve(
        self,
        query: str,
        top_k: int | None = None,
        filters: dict[str, str] | None = None,
        mode: Mode = "hybrid",
        *,
        query_embedding: Sequence[float] | None = None,
    ) -> list[Passage]:
        """Best `top_k` passages for `query`; `filters` are equalities on source/title/heading/page/file_type.

        `query_embedding` reuses a vector already computed with the same model (the semantic
        cache embeds the question too), saving one embedding per call.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        k = self.settings.top_k if top_k is None else top_k
        if k < 1:
            raise ValueError(f"top_k must be at least 1, not {k}")
        where = chroma_where(filters)
        if not query.strip():
            return []
        vector = None
        if mode != "bm25":
            vector = list(query_embedding) if query_embedding is not None else self._embed.get_query_embedding(query)
        with self._shared.lock:
            view = self._current()
            if view.manifest.chunks == 0:
                return []
            depth = min(view.manifest.chunks, k if mode != "hybrid" else max(k, self.settings.candidates_k))
            dense = _dense(view.collection, vector, depth, where) if vector is not None else []
            allowed = collection_ids(view.collection, where) if where is not None and mode != "dense" else None
            sparse = view.bm25.search(query, depth, allowed) if mode != "dense" else []
            if mode == "dense":
                ranked = [(hit.node_id, hit.score) for hit in dense]
            elif mode == "bm25":
                ranked = sparse
            elif self.settings.fusion == "rrf":
                ranked = reciprocal_rank_fusion(
                    [[h.node_id for h in dense], [i for i, _ in sparse]], self.settings.rrf_k
                )
            else:
                ranked = convex_fusion([(h.node_id, h.score) for h in dense], sparse, self.settings.dense_weight)
            ranked = ranked[:k]
            known = {hit.node_id: hit for hit in dense}
            missing = [i for i, _ in ranked if i not in known]
            if missing:
                known.update(_fetch(view.collection, missing))
        return [known[i].with_score(score) for i, score in ranked if i in known]

    async def aretrieve(
        self,
        query: str,
        top_k: int | None = None,
        filters: dict[str, str] | None = None,
        mode: Mode = "hybrid",
        *,
        query_embedding: Sequence[float] | None = None,
    ) -> list[Passage]:
        """`retrieve` in a worker thread: the embedding and the stores are blocking, CPU-bound calls."""
        return await asyncio.to_thread(self.retrieve, query, top_k, filters, mode, query_embedding=query_embedding)


def open_retriever(settings: IndexSettings, *, embed_model: BaseEmbedding | None = None) -> HybridRetriever:
    """Open the index named by the settings for retrieval.

    Raises IndexNotFoundError (nothing ingested yet), NotAnIndexError (the folder holds
    something else) or EmbeddingMismatchError (built with another model or backend).
    `embed_model`, when given, decides the backend; else `settings.embed_backend` does.
    """
    from indexing.embeddings import embedding_backend, embedding_dimension, load_embedding

    records = IndexRecords(settings, readonly=True)
    try:
        records.require_index()
    except BaseException:
        records.close()
        raise
    backend = embedding_backend(embed_model) if embed_model is not None else settings.embed_backend
    shared = _acquire_shared(settings, records, backend)
    try:
        with shared.lock:
            manifest = shared.current().manifest
        model = embed_model or load_embedding(settings.embed_model, settings.embed_batch_size, backend)
        dimension = embedding_dimension(model)
        if dimension != manifest.embed_dimension:
            raise EmbeddingMismatchError(
                f"{records.description} holds {manifest.embed_dimension}-d vectors but the embedding model "
                f"gives {dimension}-d ones; it was built with {manifest.embed_model!r}"
            )
    except BaseException:
        _release_shared(shared)
        raise
    return HybridRetriever(settings, shared, model)


def convex_fusion(
    dense: Sequence[tuple[str, float]], sparse: Sequence[tuple[str, float]], dense_weight: float
) -> list[tuple[str, float]]:
    """`dense_weight` x cosine + (1 - dense_weight) x BM25 / the query's best BM25 score.

    A convex combination of normalised scores (Bruch et al. 2023, "An Analysis of Fusion Functions
    for Hybrid Retrieval"). Unlike RRF it keeps how far ahead a candidate is, not just its rank:
    on SQuAD it beat dense and BM25 on every metric where RRF fell below BM25 at the top ranks.
    """
    best = max((score for _, score in sparse), default=0.0)
    scores = {node_id: dense_weight * score for node_id, score in dense}
    for node_id, score in sparse:
        scores[node_id] = scores.get(node_id, 0.0) + (1.0 - dense_weight) * (score / best if best > 0 else 0.0)
    return sorted(scores.items(), key=lambda item: -item[1])


def reciprocal_rank_fusion(rankings: Sequence[Sequence[str]], k: int) -> list[tuple[str, float]]:
    """Sum of 1/(k + rank) over the rankings (rank from 1); ties keep first-seen order."""
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, node_id in enumerate(ranking, start=1):
            scores[node_id] = scores.get(node_id, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda item: -item[1])


@dataclass(frozen=True)
class _Hit:
    node_id: str
    text: str
    metadata: dict[str, Any]
    score: float

    def with_score(self, score: float) -> Passage:
        meta = self.metadata
        page = meta.get(PAGE)
        return Passage(
            node_id=self.node_id,
            text=self.text,
            source=str(meta.get(SOURCE, "")),
            title=meta.get(TITLE) or None,
            page=int(page) if isinstance(page, int | float) and page else None,
            heading=meta.get(HEADING) or None,
            chunk=int(meta.get(CHUNK, 0)),
            score=score,
        )


def _dense(collection: Collection, vector: list[float], depth: int, where: dict[str, Any] | None) -> list[_Hit]:
    result = collection.query(
        query_embeddings=np.asarray([vector], dtype=np.float32),
        n_results=depth,
        where=where,
        include=["documents", "metadatas", "distances"],
    )
    ids = result["ids"][0]
    docs = (result["documents"] or [[]])[0]
    metas = (result["metadatas"] or [[]])[0]
    distances = (result["distances"] or [[]])[0]
    return [
        _Hit(i, doc or "", dict(meta or {}), 1.0 - float(dist))
        for i, doc, meta, dist in zip(ids, docs, metas, distances, strict=True)
    ]


def _fetch(collection: Collection, ids: list[str]) -> dict[str, _Hit]:
    got = collection.get(ids=ids, include=["documents", "metadatas"])
    docs = got["documents"] or []
    metas = got["metadatas"] or []
    return {i: _Hit(i, doc or "", dict(meta or {}), 0.0) for i, doc, meta in zip(got["ids"], docs, metas, strict=True)}
