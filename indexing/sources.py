"""Finding the files to ingest: folders walked recursively, bad paths reported one by one.

Symlinks are followed (people link document folders in), but a link back into a folder being
walked is a loop and is reported instead of walked forever; a second path to a file or folder
already found is skipped so nothing is indexed twice.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

FILE_TYPES: dict[str, str] = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".text": "text",
    ".pdf": "pdf",
    ".html": "html",
    ".htm": "html",
    ".docx": "docx",
    ".csv": "csv",
    ".json": "json",
}


@dataclass(frozen=True)
class SourceFile:
    """A file to ingest. `source` is its document id: relative to the docs root when under it."""

    path: Path
    source: str
    file_type: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Problem:
    """A path that was not ingested, and why (shown to the user verbatim)."""

    path: str
    reason: str


@dataclass
class Scan:
    files: list[SourceFile] = field(default_factory=list)
    failed: list[Problem] = field(default_factory=list)
    skipped: list[Problem] = field(default_factory=list)
    folders: list[Path] = field(default_factory=list)
    """Folders walked: the scope `--prune` may remove vanished files from."""
    hidden: int = 0


def document_id(path: Path, docs_root: Path) -> str:
    """Relative to the docs root when the file is under it, else absolute; always with `/`."""
    absolute = Path(os.path.abspath(path))
    try:
        return absolute.relative_to(os.path.abspath(docs_root)).as_posix()
    except ValueError:
        return absolute.as_posix()


def scan(paths: Sequence[Path], docs_root: Path, *, max_bytes: int, exclude: Path | None = None) -> Scan:
    """Collect supported files under `paths`; every other path ends up in failed or skipped."""
    walker = _Walker(docs_root=docs_root, max_bytes=max_bytes, exclude=exclude)
    for given in paths:
        walker.visit_root(Path(os.path.abspath(given)))
    walker.keep_one_path_per_file()
    return walker.result


@dataclass
class _Walker:
    docs_root: Path
    max_bytes: int
    exclude: Path | None
    result: Scan = field(default_factory=Scan)
    candidates: dict[tuple[int, int], list[tuple[Path, os.stat_result]]] = field(default_factory=dict)
    seen_dirs: dict[tuple[int, int], Path] = field(default_factory=dict)

    def visit_root(self, path: Path) -> None:
        if not os.path.lexists(path):
            self.result.failed.append(Problem(str(path), "no such file or directory"))
            return
        st = self._stat(path)
        if st is None:
            return
        if not stat.S_ISDIR(st.st_mode):
            self._add_file(path, st)
            return
        self.result.folders.append(path)
        # The real tree first, linked folders after: a file seen both ways keeps its real path.
        links: deque[tuple[Path, os.stat_result]] = deque()
        self._walk(path, st, links)
        while links:
            link, link_st = links.popleft()
            target = os.path.realpath(link)
            if Path(os.path.realpath(link.parent)).is_relative_to(target):
                self.result.failed.append(
                    Problem(str(link), f"symlink loop: leads back to {target}, which contains it")
                )
            else:
                self._walk(link, link_st, links)

    def _stat(self, path: Path) -> os.stat_result | None:
        try:
            return os.stat(path)
        except OSError as exc:
            self.result.failed.append(Problem(str(path), _stat_reason(path, exc)))
            return None

    def _walk(self, folder: Path, st: os.stat_result, links: deque[tuple[Path, os.stat_result]]) -> None:
        key = (st.st_dev, st.st_ino)
        if key in self.seen_dirs:
            self.result.skipped.append(Problem(str(folder), f"same folder as {self.seen_dirs[key]}"))
            return
        if self.exclude is not None and os.path.realpath(folder) == os.path.realpath(self.exclude):
            return
        self.seen_dirs[key] = folder
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            self.result.failed.append(Problem(str(folder), f"cannot list folder: {exc.strerror or exc}"))
            return
        for entry in entries:
            if entry.name.startswith("."):
                self.result.hidden += 1
                continue
            path = Path(entry.path)
            child = self._stat(path)
            if child is None:
                continue
            if not stat.S_ISDIR(child.st_mode):
                self._add_file(path, child)
            elif entry.is_symlink():
                links.append((path, child))
            else:
                self._walk(path, child, links)

    def _add_file(self, path: Path, st: os.stat_result) -> None:
        if not stat.S_ISREG(st.st_mode):
            self.result.skipped.append(Problem(str(path), "not a regular file"))
            return
        suffix = path.suffix.lower()
        if suffix not in FILE_TYPES:
            kind = f"unknown file type {suffix!r}" if suffix else "no file extension"
            self.result.skipped.append(Problem(str(path), kind))
            return
        self.candidates.setdefault((st.st_dev, st.st_ino), []).append((path, st))

    def keep_one_path_per_file(self) -> None:
        """A file reached by several paths is ingested once: under a path that is not a link, if any."""
        for paths in self.candidates.values():
            chosen, chosen_st = next(((p, s) for p, s in paths if not os.path.islink(p)), paths[0])
            for path, _ in paths:
                if path != chosen:
                    self.result.skipped.append(Problem(str(path), f"same file as {chosen}"))
            self._check_file(chosen, chosen_st)

    def _check_file(self, path: Path, st: os.stat_result) -> None:
        shown = str(path)
        if st.st_size == 0:
            self.result.failed.append(Problem(shown, "empty file (0 bytes)"))
        elif st.st_size > self.max_bytes:
            limit = f"{self.max_bytes / 1e6:g} MB limit (index.max_file_mb)"
            self.result.failed.append(Problem(shown, f"too large: {st.st_size / 1e6:.1f} MB, above the {limit}"))
        else:
            source = document_id(path, self.docs_root)
            file_type = FILE_TYPES[path.suffix.lower()]
            self.result.files.append(SourceFile(path, source, file_type, st.st_size, st.st_mtime_ns))


def _stat_reason(path: Path, exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symlink loop: the link points (directly or through others) to itself"
    if exc.errno == errno.ENOENT and os.path.islink(path):
        return f"broken symlink: points to {os.readlink(path)}, which does not exist"
    if exc.errno == errno.ENOENT:
        return "vanished while the folder was being read"
    return f"cannot read: {exc.strerror or exc}"
