"""Where an index's records live: the docstore, the manifest and BM25, in either state mode.

Embedded mode: all of them in `index.index_dir` (SQLite docstore, `manifest.json`, BM25
folders), beside the embedded Chroma; one host.
Shared mode: the docstore and the manifest are tables in PostgreSQL named for the Chroma server
and collection (`shared_index_name`), so every host reads the same records from the same
servers, and `index.index_dir` is only this host's BM25 cache. BM25 is derived data: a host
without the current version builds it from the docstore's chunk tokens, the same index the
ingesting host built, and caches it under the version it was built from.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from types import TracebackType

from config.settings import IndexSettings, sqlalchemy_url
from indexing.bm25 import Bm25Index, prune_versions
from indexing.docstore import DocStore
from indexing.errors import IndexNotFoundError, NotAnIndexError
from indexing.layout import FolderState, IndexLayout, shared_index_name
from indexing.manifest import Manifest, ManifestRow, check_model, content_version, parse_manifest, read_manifest

log = logging.getLogger(__name__)

TABLE_PREFIX = "ragindex_"
"""Shared mode: each index's tables are `ragindex_<hash of its name>_documents`, `..._chunks` and so on."""


def index_hash(name: str) -> str:
    """A short, stable tag for a shared index's name: in its table names and its BM25 cache folder."""
    return hashlib.sha256(name.encode()).hexdigest()[:12]


class IndexRecords:
    """The records of the index the settings name; `close()` (or `with`) releases the docstore.

    `readonly` opens an embedded docstore without creating it (readers); in shared mode the
    tables are created on first use by whichever process comes first.
    """

    def __init__(self, settings: IndexSettings, *, readonly: bool = False) -> None:
        self.layout = IndexLayout(settings.index_dir)
        self.shared = settings.state_url is not None
        self.name = shared_index_name(settings) if self.shared else str(self.layout.root)
        self.description = f"the index {self.name} (shared)" if self.shared else f"the index at {self.layout.root}"
        """How errors name the index."""
        self._url = settings.state_url
        self._readonly = readonly
        self._docstore: DocStore | None = None

    def __enter__(self) -> IndexRecords:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._docstore is not None:
            self._docstore.close()
            self._docstore = None

    def docstore(self) -> DocStore:
        """Opened on first use (for an embedded reader, check `has_docstore()` first)."""
        if self._docstore is None:
            if self._url is not None:
                url = sqlalchemy_url(self._url.get_secret_value())
                self._docstore = DocStore(url, prefix=f"{TABLE_PREFIX}{index_hash(self.name)}_")
            else:
                self._docstore = DocStore(self.layout.docstore, readonly=self._readonly)
        return self._docstore

    def has_docstore(self) -> bool:
        return self.shared or self.layout.docstore.is_file()

    @property
    def bm25_root(self) -> Path:
        """Where BM25 folders go, one per index version. Shared mode: a subfolder per index, so two
        collections cached in one `index_dir` never prune each other's versions."""
        if self.shared:
            return self.layout.bm25 / index_hash(self.name)
        return self.layout.bm25

    @property
    def manifest_target(self) -> Path | ManifestRow:
        """What `write_manifest` writes to: the file, or the docstore's manifest row."""
        return self.docstore() if self.shared else self.layout.manifest

    def manifest_stamp(self) -> object | None:
        """Changes whenever the manifest is rewritten; None when there is none. One `stat` (embedded)
        or one query (shared): cheap enough for every retrieval to notice another host's ingest."""
        if self.shared:
            return self.docstore().manifest_text()
        try:
            st = os.stat(self.layout.manifest)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def read_manifest(self) -> Manifest | None:
        """The manifest, or None before the first ingest wrote one."""
        if self.shared:
            text = self.docstore().manifest_text()
            return None if text is None else parse_manifest(text, f"the manifest of {self.description}")
        try:
            return read_manifest(self.layout.manifest)
        except FileNotFoundError:
            return None

    def manifest_for_model(self, embed_model: str, embed_backend: str) -> Manifest | None:
        """`read_manifest`, refusing an index built with another embedding model or backend."""
        manifest = self.read_manifest()
        return None if manifest is None else check_model(manifest, self.description, embed_model, embed_backend)

    def state(self) -> FolderState:
        """Embedded: what the index folder holds. Shared: INDEX once a manifest row exists, unless the
        local folder holds anything but this host's BM25 cache (FOREIGN)."""
        if not self.shared:
            return self.layout.state()
        root = self.layout.root
        if (root.exists() or root.is_symlink()) and (
            not root.is_dir() or any(p.name != self.layout.bm25.name for p in root.iterdir())
        ):
            return FolderState.FOREIGN
        return FolderState.INDEX if self.manifest_stamp() is not None else FolderState.EMPTY

    def require_index(self) -> Manifest:
        """The manifest, or a clear error when there is no index to read."""
        state = self.state()
        if state is FolderState.FOREIGN:
            raise self.foreign_error()
        manifest = self.read_manifest() if state is FolderState.INDEX else None
        if manifest is None:
            where = f"for {self.name} in PostgreSQL" if self.shared else f"at {self.layout.root}"
            raise IndexNotFoundError(
                f"no index {where}: build one with `make ingest` (or `python -m indexing ingest PATH`)"
            )
        return manifest

    def foreign_error(self) -> NotAnIndexError:
        if not self.shared:
            return self.layout.foreign_error()
        root = self.layout.root
        held = ", ".join(sorted(p.name for p in root.iterdir())[:5]) if root.is_dir() else "it is a file"
        return NotAnIndexError(
            f"in shared mode index.index_dir ({root}) only caches BM25 for this host, but it holds: {held}. "
            "Nothing was changed; point index.index_dir at an empty or new folder."
        )

    def bm25(self, manifest: Manifest) -> Bm25Index:
        """The BM25 index of `manifest`'s version.

        Shared mode: this host's cache of it, or, when missing, built from the docstore's chunk
        tokens and cached under the version those tokens hash to (during another host's ingest
        the docstore may be ahead of the manifest: then the cache is of that newer content).
        """
        if not self.shared:
            return Bm25Index.load(self.bm25_root / manifest.bm25_dir) if manifest.bm25_dir else Bm25Index([], None)
        try:
            return Bm25Index.load(self.bm25_root / manifest.version)
        except (OSError, ValueError):  # not cached on this host (or pruned by another local process meanwhile)
            pass
        corpus = list(self.docstore().chunk_tokens())
        version = content_version((chunk_id for chunk_id, _ in corpus), manifest.embed_model)
        index = Bm25Index.build(corpus)
        try:
            index.save(self.bm25_root / version, replace=False)
            prune_versions(self.bm25_root, keep={version, manifest.version})
        except OSError as exc:  # only a cache: answer from memory, rebuild next time
            log.warning("could not cache BM25 in %s (%s)", self.bm25_root, exc)
        return index
