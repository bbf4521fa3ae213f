"""A sentence-transformers model on ONNX Runtime, from an export made on this machine.

Why: one query through MiniLM on two CPU cores takes about a third of the time on ONNX Runtime
that it takes on torch, and every turn embeds its question (cache lookup, retrieval).
sentence-transformers' own `backend="onnx"` goes through optimum-onnx, which pins an older
transformers and would downgrade the environment; so the weights already installed are exported
here (`indexing.embeddings.export`, torch's exporter), once, and run with `onnxruntime` and the
model's own `tokenizers` tokenizer. The exported graph holds the model's pooling and
normalisation, so vectors match sentence-transformers' to float precision.

Exports live in a cache folder named by the backend and a hash of the model folder's files:
changed weights get a new export, never a stale one. Every load checks the export (metadata,
file size, ONNX Runtime accepts it, and a probe sentence gives the vector the torch model gave
at export time); a damaged export is deleted and rebuilt, with one warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from llama_index.core.base.embeddings.base import BaseEmbedding
from pydantic import Field, PrivateAttr

from config.settings import EmbedBackend
from indexing.errors import EmbeddingExportError

log = logging.getLogger(__name__)

EXPORT_FORMAT = "ragchat-onnx/1"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "meta.json"
OUTPUT = "sentence_embedding"
PROBE_TEXT = "How do I add my own documents to the index?"
MIN_PROBE_COSINE: dict[str, float] = {"onnx": 0.9999, "onnx-int8": 0.98}
"""The fp32 export reproduces torch to ~1e-7; int8 weights move vectors by about 1 % (measured)."""


class DamagedExportError(Exception):
    """An export folder that must be rebuilt (the message says why)."""


class OnnxEmbedding(BaseEmbedding):
    """LlamaIndex embedding over an exported model: tokenizers -> ONNX Runtime -> normalized vectors."""

    backend: EmbedBackend = Field(description="onnx or onnx-int8")
    max_length: int = Field(
        description="tokens read per text; longer texts are truncated, as sentence-transformers does"
    )
    _session: Any = PrivateAttr()
    _tokenizer: Any = PrivateAttr()
    _inputs: tuple[str, ...] = PrivateAttr()
    _query_prefix: str = PrivateAttr()
    _text_prefix: str = PrivateAttr()
    _lowercase: bool = PrivateAttr()

    def __init__(self, folder: Path, meta: dict[str, Any], batch_size: int, model_name: str) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        super().__init__(
            model_name=model_name, embed_batch_size=batch_size, backend=meta["backend"], max_length=meta["max_length"]
        )
        options = ort.SessionOptions()
        options.log_severity_level = 3  # ORT's informational graph warnings are noise here
        self._session = ort.InferenceSession(str(folder / MODEL_FILE), options, providers=["CPUExecutionProvider"])
        tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        tokenizer.enable_truncation(self.max_length)
        tokenizer.enable_padding(pad_id=meta["pad_id"], pad_token=meta["pad_token"])
        self._tokenizer = tokenizer
        self._inputs = tuple(meta["inputs"])
        self._query_prefix = meta["query_prefix"]
        self._text_prefix = meta["text_prefix"]
        self._lowercase = meta["lowercase"]

    @classmethod
    def class_name(cls) -> str:
        return "OnnxEmbedding"

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit vectors, one row per text, tokenized as sentence-transformers does (stripped, truncated)."""
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        cleaned = [t.strip().lower() if self._lowercase else t.strip() for t in texts]
        encodings = self._tokenizer.encode_batch(cleaned)
        columns = {
            "input_ids": [e.ids for e in encodings],
            "attention_mask": [e.attention_mask for e in encodings],
            "token_type_ids": [e.type_ids for e in encodings],
        }
        feed = {name: np.asarray(columns[name], dtype=np.int64) for name in self._inputs}
        (vectors,) = self._session.run([OUTPUT], feed)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.asarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)

    def tokenizer_copy(self) -> Any:
        """A `tokenizers.Tokenizer` equal to the one used here, free to reconfigure."""
        from tokenizers import Tokenizer

        return Tokenizer.from_str(self._tokenizer.to_str())

    def _get_query_embedding(self, query: str) -> list[float]:
        return [float(x) for x in self.encode([self._query_prefix + query])[0]]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embeddings([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return [[float(x) for x in row] for row in self.encode([self._text_prefix + t for t in texts])]


def load_onnx_embedding(path: str, backend: EmbedBackend, batch_size: int, cache_dir: Path) -> OnnxEmbedding:
    """The model at `path` (folder or hub id) on ONNX Runtime, exporting it on first use."""
    if backend not in MIN_PROBE_COSINE:
        raise ValueError(f"not an ONNX backend: {backend!r}")
    return _ensure(_source_folder(path), path, backend, batch_size, cache_dir)


def export_folder(source: Path, backend: EmbedBackend, cache_dir: Path) -> Path:
    """Where the export of the model folder `source` for `backend` lives (it may not exist yet)."""
    digest = hashlib.sha256(f"{EXPORT_FORMAT}\n{backend}\n".encode())
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(source).as_posix()}\n{file.stat().st_size}\n".encode())
        with file.open("rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    return cache_dir / f"{backend}-{digest.hexdigest()[:24]}"


def _source_folder(path: str) -> Path:
    if os.path.isdir(path):
        return Path(path)
    from huggingface_hub import snapshot_download  # a hub id, where a hub is reachable

    return Path(snapshot_download(path))


def _ensure(source: Path, name: str, backend: EmbedBackend, batch_size: int, cache_dir: Path) -> OnnxEmbedding:
    folder = export_folder(source, backend, cache_dir)
    if folder.exists():
        try:
            return _open(folder, name, backend, batch_size)
        except DamagedExportError as exc:
            log.warning("the ONNX export at %s is damaged (%s): rebuilding it", folder, exc)
            discard(folder)
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=cache_dir))
    try:
        from indexing.embeddings import export

        if backend == "onnx":
            log.info("exporting the embedding model %s to ONNX (once) into %s", name, folder)
            export.export_sentence_transformer(source, name, staging)
        else:
            _ensure(source, name, "onnx", batch_size, cache_dir)  # quantized from a checked fp32 export
            log.info("quantizing the ONNX embedding model to int8 (once) into %s", folder)
            export.quantize_int8(export_folder(source, "onnx", cache_dir), staging)
        try:
            os.rename(staging, folder)
        except OSError:  # another process finished the same export first: use theirs
            if not folder.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    try:
        return _open(folder, name, backend, batch_size)
    except DamagedExportError as exc:
        raise EmbeddingExportError(f"the fresh ONNX export of {name} at {folder} is unusable: {exc}") from None


def _open(folder: Path, name: str, backend: EmbedBackend, batch_size: int) -> OnnxEmbedding:
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT or meta.get("backend") != backend:
            raise DamagedExportError(f"{META_FILE} is not a {backend} export of format {EXPORT_FORMAT}")
        size = (folder / MODEL_FILE).stat().st_size
        if size != meta["model_bytes"]:
            raise DamagedExportError(f"{MODEL_FILE} has {size} bytes, the export wrote {meta['model_bytes']}")
        model = OnnxEmbedding(folder, meta, batch_size, name)
        probe = np.asarray(model.get_query_embedding(PROBE_TEXT), dtype=np.float64)
        expected = np.asarray(meta["probe_vector"], dtype=np.float64)
    except DamagedExportError:
        raise
    except Exception as exc:  # unreadable JSON, missing files, a protobuf ONNX Runtime rejects
        raise DamagedExportError(f"{type(exc).__name__}: {exc}") from None
    cosine = float(probe @ expected / (np.linalg.norm(expected) or 1.0)) if probe.shape == expected.shape else 0.0
    if cosine < MIN_PROBE_COSINE[backend]:
        raise DamagedExportError(
            f"its probe vector has cosine {cosine:.4f} with the torch model's (need >= {MIN_PROBE_COSINE[backend]})"
        )
    return model


def discard(folder: Path) -> None:
    """Remove an export folder; renamed first so no reader ever sees it half deleted."""
    doomed = folder.with_name(f".{folder.name}.discarded-{os.getpid()}")
    try:
        os.rename(folder, doomed)
    except FileNotFoundError:
        return
    shutil.rmtree(doomed, ignore_errors=True)
