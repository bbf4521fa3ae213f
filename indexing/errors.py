"""Errors an index can raise: each message says what is wrong and what to do about it."""

from __future__ import annotations


class IndexingError(Exception):
    """Base of every error this package raises on purpose (catch this one at entry points)."""


class IndexNotFoundError(IndexingError):
    """The index folder does not exist or holds no index yet (run `make ingest`)."""


class NotAnIndexError(IndexingError):
    """The index folder exists but holds something else, or its manifest is unreadable."""


class EmbeddingMismatchError(IndexingError):
    """The index was built with another embedding model than the settings ask for."""


class DiskFullError(IndexingError, OSError):
    """The disk holding the index filled up mid-ingest; what was committed before is kept."""


class IndexLockedError(IndexingError):
    """Another process is writing this embedded index right now."""


class FilterError(IndexingError, ValueError):
    """A retrieval filter names an unknown metadata key or a value of the wrong type."""


class UnreadableFileError(IndexingError):
    """One file could not be turned into text; the message is the per-file reason."""


class StoreUnavailableError(IndexingError):
    """The Chroma server (http mode) cannot be reached or refused the request."""


class EmbeddingExportError(IndexingError):
    """The ONNX export of the embedding model could not be built, or its vectors disagree with the model's."""
