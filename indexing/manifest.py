"""The index manifest: counts, the embedding model and backend, and a version that tracks the content.

The version is a hash of the sorted chunk ids and the embedding model. Chunk ids are themselves
hashes of each chunk's source, number, text and metadata, so the version changes exactly when
what retrieval can return changes, and stays put when a re-ingest finds nothing new. The
semantic cache keys on it to drop stale answers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from indexing.errors import EmbeddingMismatchError, NotAnIndexError

FORMAT = "ragchat-index/1"


@dataclass(frozen=True)
class Manifest:
    """What an index holds and how it was built."""

    version: str
    documents: int
    chunks: int
    embed_model: str
    embed_dimension: int
    chunk_size: int
    chunk_overlap: int
    collection: str
    chroma_mode: str
    bm25_dir: str | None
    created_at: str
    updated_at: str
    embed_backend: str = "torch"
    """How chunks were embedded (`index.embed_backend`); manifests from before the field were torch."""
    format: str = FORMAT


def content_version(chunk_ids: Iterable[str], embed_model: str) -> str:
    """Hash of the sorted chunk ids (pass them sorted) and the model: equal content, equal version."""
    digest = hashlib.sha256(f"{FORMAT}\n{embed_model}\n".encode())
    for chunk_id in chunk_ids:
        digest.update(chunk_id.encode())
        digest.update(b"\n")
    return digest.hexdigest()[:20]


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def read_manifest(path: Path) -> Manifest:
    """The manifest file of an embedded index; FileNotFoundError when there is none."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise NotAnIndexError(f"{path} is unreadable ({exc}); the index folder is damaged or not an index") from None
    return parse_manifest(text, str(path))


def parse_manifest(text: str, where: str) -> Manifest:
    """A manifest from its JSON; `where` names its file or row in errors."""
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise NotAnIndexError(f"{where} is unreadable ({exc}); the index is damaged or not an index") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise NotAnIndexError(f"{where} is not a manifest of this project (format {found!r}, expected {FORMAT!r})")
    names = {f.name for f in dataclasses.fields(Manifest)}
    try:
        return Manifest(**{k: v for k, v in raw.items() if k in names})
    except TypeError as exc:
        raise NotAnIndexError(f"{where} is incomplete ({exc}); re-run the ingest to rewrite it") from None


def read_manifest_for_model(path: Path, embed_model: str, embed_backend: str) -> Manifest:
    """The manifest file, refusing an index built with another embedding model or backend (`check_model`)."""
    return check_model(read_manifest(path), f"the index at {path.parent}", embed_model, embed_backend)


def check_model(manifest: Manifest, index: str, embed_model: str, embed_backend: str) -> Manifest:
    """`manifest`, unless its index (`index` names it in errors) was built with another model or backend.

    Another model's vectors would match nothing. Another backend's match closely (the fp32 ONNX
    export reproduces torch; int8 does not quite), but an index is only known to be right when
    its chunks and its queries are embedded the same way, so that is refused too, not re-embedded:
    re-embedding means a full ingest, which should be asked for, not happen behind a query.
    """
    if manifest.embed_model != embed_model:
        raise EmbeddingMismatchError(
            f"{index} was built with embedding model {manifest.embed_model!r} "
            f"({manifest.embed_dimension}-d) but the settings ask for {embed_model!r}; queries embedded with "
            "another model would match nothing. Set index.embed_model back, or use another index.index_dir."
        )
    if manifest.embed_backend != embed_backend:
        raise EmbeddingMismatchError(
            f"{index} was embedded with the {manifest.embed_backend!r} backend but "
            f"index.embed_backend is {embed_backend!r}; chunks and queries must be embedded the same way. "
            f"Set index.embed_backend: {manifest.embed_backend} (RAG_INDEX__EMBED_BACKEND={manifest.embed_backend}), "
            "or ingest into a new index (another index.index_dir, or another index.collection in shared mode)."
        )
    return manifest


class ManifestRow(Protocol):
    """Where shared mode keeps the manifest: a row every host reads (the docstore's)."""

    def save_manifest(self, text: str) -> None: ...


def manifest_text(manifest: Manifest) -> str:
    return json.dumps(dataclasses.asdict(manifest), indent=2, sort_keys=True) + "\n"


def write_manifest(target: Path | ManifestRow, manifest: Manifest) -> None:
    """Atomic replace of the file (or the row), so a reader never sees half a manifest and a kill never leaves one."""
    if not isinstance(target, Path):
        target.save_manifest(manifest_text(manifest))
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(manifest_text(manifest))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
