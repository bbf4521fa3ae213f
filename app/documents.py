"""The documents folder as the UI and the API see it: uploads, background ingest jobs, deletion.

Uploads land in `index.docs_dir / api.uploads_dir` under sanitised names and can never leave
it. Ingest jobs run one at a time on one worker thread (the index has one writer), file by file,
so a job reports progress and a result per file while chats go on: the retriever follows the
manifest on disk, so each ingested file is searchable (and the cache scope moves) as soon as it
is committed.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import unicodedata
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

from app.errors import NotFoundError
from config.settings import Settings
from indexing.layout import IndexLayout
from indexing.records import IndexRecords
from indexing.report import IngestReport
from indexing.sources import FILE_TYPES, document_id, scan

log = logging.getLogger(__name__)

FileStatus = Literal["added", "updated", "unchanged", "removed", "skipped", "failed"]
JobState = Literal["queued", "running", "done", "failed"]
KEPT_JOBS = 100
_FINISHED = ("done", "failed")


class JobRecords(Protocol):
    """Where job snapshots are kept for other processes (`app.store.ChatStore`: SQLite or PostgreSQL)."""

    def save_job(self, job_id: str, state: str, body: dict[str, Any], created_at: float) -> None: ...

    def load_job(self, job_id: str) -> dict[str, Any] | None: ...

    def prune_jobs(self, keep: int, finished: Sequence[str]) -> None: ...


"""Finished jobs remembered for `job()`; older ones are forgotten."""
MAX_NAME_CHARS = 120


class DocumentError(ValueError):
    """An upload or a deletion was refused; nothing was written. The message says why."""


class UploadTooLargeError(DocumentError):
    """A file (or the number of files) is above the configured limit."""


class UnknownDocumentError(NotFoundError):
    """No such document or job."""


@dataclass(frozen=True)
class SavedFile:
    name: str
    """Sanitised file name, as saved."""
    path: str
    """Document id (relative to the documents folder), as `documents()` and citations show it."""
    bytes: int
    original_name: str


@dataclass(frozen=True)
class FileResult:
    path: str
    status: FileStatus
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.status not in ("skipped", "failed")


@dataclass(frozen=True)
class IngestJob:
    """A snapshot of one background ingest."""

    id: str
    state: JobState
    done: int
    total: int
    current_file: str | None
    results: tuple[FileResult, ...]
    error: str | None = None
    """Why the whole job failed (e.g. another process holds the index); per-file problems are in results."""
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None


@dataclass(frozen=True)
class DocumentInfo:
    path: str
    """Document id: relative to the documents folder when inside it."""
    chunks: int
    bytes: int
    ingested_at: str
    title: str | None
    file_type: str


def sanitise_name(name: str) -> str:
    """A safe, visible file name from an uploaded one: no folders, no `..`, no control or odd characters."""
    base = unicodedata.normalize("NFKC", name).replace("\\", "/").rsplit("/", 1)[-1]
    base = re.sub(r"[^\w.\- ]", "_", base, flags=re.ASCII).strip(" .")
    stem, dot, suffix = base.rpartition(".")
    if not dot:
        stem, suffix = base, ""
    stem = stem.lstrip(".-_ ")[: MAX_NAME_CHARS - len(suffix) - 1] or "upload"
    return f"{stem}.{suffix}" if suffix else stem


class DocumentLibrary:
    """Uploads, ingest jobs, listing and deletion for one index and its documents folder."""

    def __init__(self, settings: Settings, embed_model: Any, records: JobRecords | None = None) -> None:
        """`records`: where job snapshots are written through, so another replica can report on a job
        this one runs (shared mode); without it jobs are known to this process only."""
        self._index = settings.index
        self._docs_root = settings.index.docs_dir
        self._uploads = self._docs_root / settings.api.uploads_dir
        self._layout = IndexLayout(settings.index.index_dir)
        self._max_bytes = int(settings.api.max_upload_mb * 1_000_000)
        self._max_files = settings.api.max_upload_files
        self._embed_model = embed_model
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest")
        self._jobs: OrderedDict[str, IngestJob] = OrderedDict()
        self._lock = threading.Lock()
        self._records = records

    @property
    def uploads_dir(self) -> Path:
        return self._uploads

    def close(self) -> None:
        """Wait for a running ingest (it commits file by file) and stop the worker."""
        self._worker.shutdown(wait=True, cancel_futures=True)

    # -- uploads --------------------------------------------------------------------------------

    def save_uploads(self, files: Sequence[tuple[str, bytes]]) -> list[SavedFile]:
        """Write the files into the uploads folder (all or none are checked before any is written)."""
        if not files:
            raise DocumentError("no files given")
        if len(files) > self._max_files:
            raise UploadTooLargeError(
                f"{len(files)} files in one upload; at most {self._max_files} (api.max_upload_files)"
            )
        planned: list[tuple[str, str, bytes]] = []
        for original, data in files:
            name = sanitise_name(original)
            suffix = Path(name).suffix.lower()
            if suffix not in FILE_TYPES:
                allowed = ", ".join(sorted(FILE_TYPES))
                raise DocumentError(
                    f"{original!r}: file type {suffix or '(none)'!r} cannot be indexed; allowed: {allowed}"
                )
            if len(data) > self._max_bytes:
                raise UploadTooLargeError(
                    f"{original!r} is {len(data) / 1e6:.1f} MB; "
                    f"the limit is {self._max_bytes / 1e6:g} MB (api.max_upload_mb)"
                )
            planned.append((original, name, data))
        self._uploads.mkdir(parents=True, exist_ok=True)
        root = self._uploads.resolve()
        saved = []
        for original, name, data in planned:
            target = root / name
            if target.parent != root or target.is_symlink():
                raise DocumentError(f"{original!r}: refusing to write outside {root}")
            tmp = root / f".{name}.{uuid.uuid4().hex}.part"
            tmp.write_bytes(data)
            os.replace(tmp, target)
            saved.append(SavedFile(name, document_id(target, self._docs_root), len(data), original))
        return saved

    # -- ingest jobs ----------------------------------------------------------------------------

    def start_ingest(self, paths: Sequence[Path] | None = None) -> str:
        """Queue an ingest of `paths` (default: the whole documents folder, pruning files deleted
        from it); returns the job id at once. Jobs run one at a time."""
        job = IngestJob(uuid.uuid4().hex, "queued", 0, 0, None, ())
        with self._lock:
            self._jobs[job.id] = job
            finished = [j for j in self._jobs.values() if j.state in ("done", "failed")]
            for old in finished[: max(0, len(finished) - KEPT_JOBS)]:
                del self._jobs[old.id]
        self._record(job, prune=True)
        targets = [Path(p) for p in paths] if paths else None
        self._worker.submit(self._run_job, job.id, targets)
        return job.id

    def job(self, job_id: str) -> IngestJob:
        """A job of this process, or (with `records`) one another process started."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None and self._records is not None:
            body = self._records.load_job(job_id)
            if body is not None:
                results = tuple(FileResult(**r) for r in body.pop("results"))
                job = IngestJob(**body, results=results)
        if job is None:
            raise UnknownDocumentError(f"no ingest job {job_id!r}")
        return job

    def _update(self, job_id: str, **changes: Any) -> None:
        with self._lock:
            job = self._jobs[job_id] = replace(self._jobs[job_id], **changes)
        self._record(job)

    def _record(self, job: IngestJob, *, prune: bool = False) -> None:
        """Write the snapshot through; a store that fails costs other replicas the progress view, not the job."""
        if self._records is None:
            return
        try:
            self._records.save_job(job.id, job.state, asdict(job), job.created_at)
            if prune:
                self._records.prune_jobs(KEPT_JOBS, _FINISHED)
        except Exception as exc:
            log.warning("could not store the state of ingest job %s (%s: %s)", job.id, type(exc).__name__, exc)

    def _run_job(self, job_id: str, paths: list[Path] | None) -> None:
        from indexing.pipeline import ingest

        prune = paths is None
        roots = paths or [self._docs_root]
        found = scan(
            roots, self._docs_root, max_bytes=int(self._index.max_file_mb * 1_000_000), exclude=self._layout.root
        )
        results = [FileResult(p.path, "failed", p.reason) for p in found.failed]
        results += [FileResult(p.path, "skipped", p.reason) for p in found.skipped]
        self._update(job_id, state="running", total=len(found.files) + prune, results=tuple(results))
        try:
            for done, source in enumerate(found.files):
                self._update(job_id, current_file=source.source, done=done)
                report = ingest(self._index, [source.path], progress=False, embed_model=self._embed_model)
                results += _file_results(report, source.source)
            if prune:
                self._update(job_id, current_file="(removing deleted files)", done=len(found.files))
                report = ingest(self._index, roots, prune=True, progress=False, embed_model=self._embed_model)
                results += [FileResult(s, "removed") for s in report.removed]
        except Exception as exc:  # a whole-run failure (lock held elsewhere, store down) ends the job
            log.warning("ingest job %s failed: %s", job_id, exc)
            self._update(job_id, state="failed", error=str(exc), results=tuple(results), finished_at=time.time())
            return
        total = len(found.files) + prune
        self._update(
            job_id, state="done", done=total, current_file=None, results=tuple(results), finished_at=time.time()
        )

    # -- the documents ----------------------------------------------------------------------------

    def documents(self) -> list[DocumentInfo]:
        with IndexRecords(self._index, readonly=True) as index:
            records = index.docstore().records() if index.has_docstore() else {}
        return [
            DocumentInfo(r.source, r.chunks, r.size, r.ingested_at, r.title, r.file_type)
            for r in sorted(records.values(), key=lambda r: r.source)
        ]

    def delete_document(self, path: str) -> None:
        """Remove a document's file from the documents folder and its chunks from the index.

        Runs on the ingest worker (after any queued job) and returns once the chunks are gone;
        if that fails the file is put back and the error raised.
        """
        self._worker.submit(self._delete, path).result()

    def _delete(self, source: str) -> None:
        from indexing.pipeline import ingest

        record = next((d for d in self.documents() if d.path == source), None)
        if record is None:
            raise UnknownDocumentError(f"no document {source!r} in the index")
        file = self._docs_root / source
        if os.path.isabs(source) or not file.resolve().is_relative_to(self._docs_root.resolve()):
            raise DocumentError(
                f"{source!r} is outside the documents folder {self._docs_root}; remove it with "
                "`python -m indexing ingest --prune FOLDER` after deleting the file"
            )
        hidden = file.with_name(f".deleting-{uuid.uuid4().hex}-{file.name}")  # hidden files are not ingested
        moved = file.is_file()
        if moved:
            os.replace(file, hidden)
        try:
            report = ingest(self._index, [file.parent], prune=True, progress=False, embed_model=self._embed_model)
        except BaseException:
            if moved:
                os.replace(hidden, file)
            raise
        if moved:
            hidden.unlink()
        if source not in report.removed:
            raise DocumentError(f"{source!r} was not removed from the index: {report.summary()}")


def _file_results(report: IngestReport, source: str) -> list[FileResult]:
    """One file's outcome from its own ingest report."""
    outcomes: list[tuple[FileStatus, list[str]]] = [
        ("added", report.added),
        ("updated", report.updated),
        ("unchanged", report.unchanged),
    ]
    for status, names in outcomes:
        if source in names:
            return [FileResult(source, status)]
    problems = [FileResult(p.path, "failed", p.reason) for p in report.failed]
    problems += [FileResult(p.path, "skipped", p.reason) for p in report.skipped]
    return problems or [FileResult(source, "failed", "not ingested (no reason reported)")]
