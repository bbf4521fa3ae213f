"""The question embedding the cache searches with: the project's one embedding loader, as float32.

The model comes from `indexing.embeddings.load_embedding` (whatever backend it picks), never
loaded here, so the cache and the index always embed alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class EmbeddingError(RuntimeError):
    """The embedding model failed: not a store problem, so the store is left alone."""


class QuestionEmbedding:
    """Turns a question into the read-only float32 vector faiss searches with."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.dimension = len(self("dimension probe"))

    def __call__(self, text: str) -> np.ndarray:
        try:
            vector = np.asarray(self._model.get_query_embedding(text), dtype="float32")
        except Exception as exc:
            raise EmbeddingError(f"embedding the question failed: {exc}") from exc
        vector.setflags(write=False)
        return vector
