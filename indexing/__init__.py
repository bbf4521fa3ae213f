"""Documents -> a persistent Chroma + BM25 index built with LlamaIndex, and hybrid retrieval over it.

`ingest(settings.index, paths)` builds or updates the index; `open_retriever(settings.index)`
returns a HybridRetriever (`retrieve`, `aretrieve`; `chains.IndexRetriever` wraps it for
LangChain). The heavy parts (Chroma, LlamaIndex, the embedding model) load on first use, not on
`import indexing`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from indexing.errors import (
    EmbeddingMismatchError,
    FilterError,
    IndexingError,
    IndexLockedError,
    IndexNotFoundError,
    NotAnIndexError,
    StoreUnavailableError,
    UnreadableFileError,
)

if TYPE_CHECKING:
    from indexing.pipeline import ingest
    from indexing.report import IngestReport
    from indexing.retrieval import HybridRetriever, Passage, open_retriever

_LAZY = {
    "HybridRetriever": "indexing.retrieval",
    "Passage": "indexing.retrieval",
    "open_retriever": "indexing.retrieval",
    "ingest": "indexing.pipeline",
    "IngestReport": "indexing.report",
}

__all__ = [
    "EmbeddingMismatchError",
    "FilterError",
    "HybridRetriever",
    "IndexLockedError",
    "IndexNotFoundError",
    "IndexingError",
    "IngestReport",
    "NotAnIndexError",
    "Passage",
    "StoreUnavailableError",
    "UnreadableFileError",
    "ingest",
    "open_retriever",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'indexing' has no attribute {name!r}")
