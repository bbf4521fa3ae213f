"""Where the pieces of an index live inside its folder, and whether a folder is an index at all."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from indexing.errors import IndexNotFoundError, NotAnIndexError

if TYPE_CHECKING:
    from config.settings import IndexSettings

MANIFEST_NAME = "manifest.json"


def shared_index_name(settings: IndexSettings) -> str:
    """What names an index in shared mode, on every host alike: its Chroma server and collection.

    The ingest lock and the docstore's PostgreSQL tables are keyed by it, so every host must
    spell the server the same way (`index.chroma_host`, `index.chroma_port`).
    """
    return f"{settings.chroma_host}:{settings.chroma_port}/{settings.collection}"


class FolderState(Enum):
    MISSING = "missing"
    EMPTY = "empty"
    INDEX = "index"
    FOREIGN = "foreign"


@dataclass(frozen=True)
class IndexLayout:
    """The files of one index: Chroma, the docstore, BM25, the manifest and the writer lock."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST_NAME

    @property
    def chroma(self) -> Path:
        return self.root / "chroma"

    @property
    def docstore(self) -> Path:
        return self.root / "docstore.sqlite"

    @property
    def bm25(self) -> Path:
        return self.root / "bm25"

    @property
    def lock(self) -> Path:
        return self.root / "ingest.lock"

    def state(self) -> FolderState:
        if not self.root.exists() and not self.root.is_symlink():
            return FolderState.MISSING
        if not self.root.is_dir():
            return FolderState.FOREIGN
        if self.manifest.is_file():
            return FolderState.INDEX
        # A lone lock file is a first ingest that is still starting: the folder counts as empty.
        others = [p for p in self.root.iterdir() if p.name != self.lock.name]
        return FolderState.FOREIGN if others else FolderState.EMPTY

    def require_index(self) -> None:
        """Raise a clear error unless the folder holds an index (what readers need)."""
        state = self.state()
        if state in (FolderState.MISSING, FolderState.EMPTY):
            raise IndexNotFoundError(
                f"no index at {self.root}: build one with `make ingest` (or `python -m indexing ingest PATH`)"
            )
        if state is FolderState.FOREIGN:
            raise self.foreign_error()

    def foreign_error(self) -> NotAnIndexError:
        if not self.root.is_dir():
            return NotAnIndexError(f"{self.root} is not an index folder: it is a file; point index.index_dir elsewhere")
        entries = sorted(p.name for p in self.root.iterdir())
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        return NotAnIndexError(
            f"{self.root} is not an index (no {MANIFEST_NAME}; it holds: {shown}). "
            "Nothing was changed; point index.index_dir at an empty or new folder."
        )
