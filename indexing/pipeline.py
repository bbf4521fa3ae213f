"""`ingest`: files -> LlamaIndex IngestionPipeline (chunk, embed) -> Chroma, incrementally.

Order of writes per batch of files, chosen so a kill at any point heals on the next run:
1. the batch's sources are marked in flight in the docstore;
2. the pipeline adds the new chunks to Chroma (content-addressed ids: re-adding is a no-op);
3. chunks of those sources that are no longer wanted are deleted from Chroma;
4. one docstore transaction records the files with their chunks and clears the in-flight marks.
The next run redoes any source still in flight. BM25 and the manifest are derived from the
docstore at the end, whenever the content version differs from the manifest's.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import logging
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from llama_index.core.ingestion import IngestionPipeline
from llama_index.core.schema import BaseNode, Document, MetadataMode
from llama_index.vector_stores.chroma import ChromaVectorStore

from config.settings import IndexSettings
from indexing import bm25
from indexing.chunking import CHUNKER_VERSION, Chunker, effective_chunk_size, model_tokenizer
from indexing.docstore import ChunkRow, DocRecord, DocStore, Inflight
from indexing.errors import DiskFullError, UnreadableFileError
from indexing.layout import FolderState
from indexing.lock import writer_lock
from indexing.manifest import Manifest, content_version, now_iso, write_manifest
from indexing.metadata import CHUNK, DOC_HASH, SOURCE
from indexing.progress import EmbedWithProgress, IngestProgress
from indexing.readers import read_documents
from indexing.records import IndexRecords
from indexing.report import IngestReport
from indexing.sources import FILE_TYPES, Problem, SourceFile, scan
from indexing.store import close_client, collection_ids, create_collection, open_client

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection
    from llama_index.core.base.embeddings.base import BaseEmbedding

log = logging.getLogger(__name__)

Stage = Literal["after_vector_write", "after_commit"]
"""Points of a batch where `on_stage` is called: its chunks are in Chroma; its docstore commit is done."""


def ingest(
    settings: IndexSettings,
    paths: Sequence[Path] | None = None,
    *,
    prune: bool = False,
    progress: bool | None = None,
    embed_model: BaseEmbedding | None = None,
    on_stage: Callable[[Stage], None] | None = None,
) -> IngestReport:
    """Bring the index up to date with `paths` (default: `settings.docs_dir`); see IngestReport.

    `on_stage` is called at each `Stage` of every batch: tests kill the process there to prove a
    killed ingest heals.

    Relative `paths` are taken from the current directory, like any command-line path; relative
    settings paths from the repository root. Raises IndexingError subclasses for whole-run
    problems (lock taken, folder not an index, other embedding model); per-file problems are in
    the report and never raise.
    """
    records = IndexRecords(settings)
    layout = records.layout
    lock = writer_lock(settings, layout)
    # Embedded mode checks before its lock file goes into the folder. In shared mode the local
    # folder is only a cache, checked once the lock is ours.
    if not records.shared and layout.state() is FolderState.FOREIGN:
        raise layout.foreign_error()
    with records:
        if not records.shared:
            layout.root.mkdir(parents=True, exist_ok=True)
        with lock:
            if records.shared and records.state() is FolderState.FOREIGN:
                raise records.foreign_error()
            run = _IngestRun(settings, records, embed_model, progress, on_stage)
            roots = [Path(os.path.abspath(p)) for p in paths] if paths else [settings.docs_dir]
            try:
                return run.run(roots, prune)
            except Exception as exc:
                full = _disk_full(exc, layout.root)
                if full is None:
                    raise
                raise full from exc


LOW_SPACE_BYTES = 16 * 1024 * 1024
"""Below this much free space an ingest failure is reported as a full disk: Chroma reports one as
"Error in compaction: Failed to apply logs to the metadata segment", which names no cause."""


def _disk_full(exc: Exception, root: Path) -> DiskFullError | None:
    """A clear error when `exc` means the disk holding `root` is full, else None."""
    text = str(exc).lower()
    said = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
    said = said or "disk is full" in text or "no space left" in text
    try:
        free = shutil.disk_usage(root).free
    except OSError:
        free = None
    if not said and (free is None or free >= LOW_SPACE_BYTES):
        return None
    left = "" if free is None else f", {free // 1024} kB free"
    return DiskFullError(
        errno.ENOSPC,
        f"the ingest stopped because the disk holding the index at {root} is full{left} "
        f"({type(exc).__name__}: {exc}). The files committed before are kept and still answer; "
        "free some space and run the ingest again to finish the rest.",
    )


@dataclass
class _Pending:
    file: SourceFile
    known: bool
    file_hash: str
    docs: list[Document]


class _IngestRun:
    def __init__(
        self,
        settings: IndexSettings,
        records: IndexRecords,
        model: BaseEmbedding | None,
        progress: bool | None,
        on_stage: Callable[[Stage], None] | None,
    ) -> None:
        from indexing.embeddings import embedding_backend

        self.settings = settings
        self.records = records
        self.layout = records.layout
        self._model = model
        self.backend = embedding_backend(model) if model is not None else settings.embed_backend
        self.progress = progress
        self.fingerprint = (
            f"chunker{CHUNKER_VERSION}/{settings.embed_model}/{settings.chunk_size}/{settings.chunk_overlap}"
        )
        self.max_bytes = int(settings.max_file_mb * 1_000_000)
        self._pipeline: IngestionPipeline | None = None
        self._chunk_size: int | None = None
        self._on_stage = on_stage or _no_hook
        self._collection: Collection | None = None
        self._progress: IngestProgress | None = None

    @property
    def model(self) -> BaseEmbedding:
        """Loaded on first use: a re-ingest that finds nothing new never pays for the model."""
        if self._model is None:
            from indexing.embeddings import load_embedding

            self._model = load_embedding(self.settings.embed_model, self.settings.embed_batch_size, self.backend)
        return self._model

    def run(self, paths: list[Path], prune: bool) -> IngestReport:
        started = time.perf_counter()
        manifest = self.records.manifest_for_model(self.settings.embed_model, self.backend)
        client = open_client(self.settings, self.layout)  # before writing anything: a dead server changes nothing
        docstore = self.records.docstore()
        try:
            manifest = manifest or self._new_manifest()
            report = IngestReport(index_dir=str(self.layout.root), version_before=manifest.version)
            self._collection = create_collection(
                client, self.settings.collection, self.settings.embed_model, manifest.embed_dimension
            )
            found = scan(paths, self.settings.docs_dir, max_bytes=self.max_bytes, exclude=self.layout.root)
            report.failed += found.failed
            report.skipped += found.skipped
            report.hidden = found.hidden
            files, forced = self._recover(docstore, found.files, report)
            self._ingest_files(docstore, files, forced, report)
            if prune:
                seen = {os.path.abspath(f.path) for f in found.files}
                seen |= {os.path.abspath(p.path) for p in (*found.failed, *found.skipped)}
                self._prune(docstore, found.folders, seen, report)
            self._finish(manifest, docstore, report)
        finally:
            self.records.close()
            close_client(client)
        report.seconds = time.perf_counter() - started
        return report

    @property
    def collection(self) -> Collection:
        assert self._collection is not None, "the collection is opened at the start of run()"
        return self._collection

    # -- setup --------------------------------------------------------------------------------

    def _new_manifest(self) -> Manifest:
        """Written before any chunk, so even a first ingest killed early leaves a recognisable index."""
        from indexing.embeddings import embedding_dimension

        stamp = now_iso()
        manifest = Manifest(
            version=content_version([], self.settings.embed_model),
            documents=0,
            chunks=0,
            embed_model=self.settings.embed_model,
            embed_dimension=embedding_dimension(self.model),
            embed_backend=self.backend,
            chunk_size=self.chunk_size,
            chunk_overlap=self.settings.chunk_overlap,
            collection=self.settings.collection,
            chroma_mode=self.settings.chroma_mode,
            bm25_dir=None,
            created_at=stamp,
            updated_at=stamp,
        )
        write_manifest(self.records.manifest_target, manifest)
        return manifest

    @property
    def chunk_size(self) -> int:
        if self._chunk_size is None:
            self._chunk_size = effective_chunk_size(self.settings.chunk_size, self.model)
        return self._chunk_size

    @property
    def pipeline(self) -> IngestionPipeline:
        if self._pipeline is None:
            chunker = Chunker(self.chunk_size, self.settings.chunk_overlap, model_tokenizer(self.model))
            self._pipeline = IngestionPipeline(
                transformations=[chunker, EmbedWithProgress(self.model, self._chunks_embedded)],
                vector_store=ChromaVectorStore(chroma_collection=self.collection),
                disable_cache=True,
            )
        return self._pipeline

    # -- the work -------------------------------------------------------------------------------

    def _recover(
        self, docstore: DocStore, files: list[SourceFile], report: IngestReport
    ) -> tuple[list[SourceFile], set[str]]:
        """Finish what a killed run left in flight: removals are redone, upserts forced."""
        in_scan = {f.source for f in files}
        forced: set[str] = set()
        extra: list[SourceFile] = []
        for item in docstore.inflight():
            path = Path(item.path)
            if item.action == "upsert" and path.is_file() and path.suffix.lower() in FILE_TYPES:
                forced.add(item.source)
                if item.source not in in_scan:
                    st = path.stat()
                    extra.append(
                        SourceFile(path, item.source, FILE_TYPES[path.suffix.lower()], st.st_size, st.st_mtime_ns)
                    )
            else:
                self._remove(docstore, item.source, item.path, report)
        return files + extra, forced

    def _ingest_files(
        self, docstore: DocStore, files: list[SourceFile], forced: set[str], report: IngestReport
    ) -> None:
        records = docstore.records()
        to_read: list[SourceFile] = []
        for f in files:
            rec = records.get(f.source)
            if (
                rec is not None
                and f.source not in forced
                and rec.fingerprint == self.fingerprint
                and (rec.size, rec.mtime_ns) == (f.size, f.mtime_ns)
            ):
                report.unchanged.append(f.source)
            else:
                to_read.append(f)
        if not to_read:
            return
        self._progress = IngestProgress(len(to_read), self.progress)
        batch: list[_Pending] = []
        batch_chars = 0
        try:
            for f in to_read:
                pending = self._read(f, records.get(f.source), f.source in forced, docstore, report)
                if pending is None:
                    self._progress.file_done()
                    continue
                batch.append(pending)
                batch_chars += sum(len(d.text) for d in pending.docs)
                if batch_chars >= self.settings.commit_chars:
                    self._write(docstore, batch, report)
                    batch, batch_chars = [], 0
            if batch:
                self._write(docstore, batch, report)
        finally:
            self._progress.close()

    def _chunks_embedded(self, done: int, total: int, step: int) -> None:
        if self._progress is not None:
            self._progress.chunks_embedded(done, total, step)

    def _read(
        self, f: SourceFile, rec: DocRecord | None, forced: bool, docstore: DocStore, report: IngestReport
    ) -> _Pending | None:
        shown = str(f.path)
        try:
            data = f.path.read_bytes()
        except FileNotFoundError:
            report.failed.append(Problem(shown, "vanished during ingest (deleted or moved while it ran)"))
            return None
        except OSError as exc:
            report.failed.append(Problem(shown, f"cannot read: {exc.strerror or exc}"))
            return None
        if not data:
            report.failed.append(Problem(shown, "empty file (0 bytes)"))
            return None
        if len(data) > self.max_bytes:
            report.failed.append(Problem(shown, f"too large: grew to {len(data) / 1e6:.1f} MB while being read"))
            return None
        file_hash = hashlib.sha256(data).hexdigest()
        if rec is not None and not forced and rec.fingerprint == self.fingerprint and rec.file_hash == file_hash:
            docstore.touch(f.source, str(f.path), f.size, f.mtime_ns)
            report.unchanged.append(f.source)
            return None
        try:
            docs = read_documents(data, f.source, f.file_type, {DOC_HASH: file_hash})
        except UnreadableFileError as exc:
            report.failed.append(Problem(shown, str(exc)))
            return None
        except Exception as exc:  # a parser bug on one odd file must not stop the others
            log.debug("parser failure on %s", shown, exc_info=True)
            report.failed.append(Problem(shown, f"could not parse ({type(exc).__name__}: {exc})"))
            return None
        return _Pending(f, rec is not None or forced, file_hash, docs)

    def _write(self, docstore: DocStore, batch: list[_Pending], report: IngestReport) -> None:
        docstore.mark_inflight(Inflight(p.file.source, str(p.file.path), "upsert") for p in batch)
        if self._progress is not None:
            self._progress.batch_started(len(batch))
        started = time.perf_counter()
        nodes = self.pipeline.run(documents=[d for p in batch for d in p.docs])
        report.embed_seconds += time.perf_counter() - started
        self._on_stage("after_vector_write")
        by_source: dict[str, list[BaseNode]] = defaultdict(list)
        for node in nodes:
            by_source[str(node.metadata[SOURCE])].append(node)
        entries: list[tuple[DocRecord, list[ChunkRow]]] = []
        for p in batch:
            chunks = by_source.get(p.file.source, [])
            if p.known:  # a new file cannot have stale chunks: skip the lookup
                stale = collection_ids(self.collection, {SOURCE: p.file.source}) - {n.node_id for n in chunks}
                if stale:
                    self.collection.delete(ids=sorted(stale))
                    report.chunks_deleted += len(stale)
            tokens = bm25.tokenize([n.get_content(MetadataMode.EMBED) for n in chunks])
            rows = [
                ChunkRow(n.node_id, int(n.metadata[CHUNK]), " ".join(t)) for n, t in zip(chunks, tokens, strict=True)
            ]
            entries.append((self._record(p, len(rows)), rows))
            (report.updated if p.known else report.added).append(p.file.source)
        docstore.commit(entries)
        self._on_stage("after_commit")
        report.chunks_written += len(nodes)
        if self._progress is not None:
            self._progress.batch_done()

    def _record(self, p: _Pending, chunks: int) -> DocRecord:
        title = next((d.metadata.get("title") for d in p.docs if d.metadata.get("title")), None)
        return DocRecord(
            source=p.file.source,
            path=str(p.file.path),
            file_hash=p.file_hash,
            size=p.file.size,
            mtime_ns=p.file.mtime_ns,
            fingerprint=self.fingerprint,
            file_type=p.file.file_type,
            title=title,
            chunks=chunks,
            ingested_at=now_iso(),
        )

    def _prune(self, docstore: DocStore, folders: list[Path], seen: set[str], report: IngestReport) -> None:
        """Remove documents that lived under a walked folder and are gone from it."""
        roots = [os.path.join(os.path.abspath(f), "") for f in folders]
        for source, rec in sorted(docstore.records().items()):
            path = os.path.abspath(rec.path)
            if path not in seen and any(path.startswith(root) for root in roots):
                self._remove(docstore, source, rec.path, report)

    def _remove(self, docstore: DocStore, source: str, path: str, report: IngestReport) -> None:
        docstore.mark_inflight([Inflight(source, path, "remove")])
        doomed = collection_ids(self.collection, {SOURCE: source})
        if doomed:
            self.collection.delete(ids=sorted(doomed))
        docstore.remove([source])
        report.chunks_deleted += len(doomed)
        report.removed.append(source)

    def _finish(self, manifest: Manifest, docstore: DocStore, report: IngestReport) -> None:
        """Rebuild BM25 and rewrite the manifest whenever the committed content moved."""
        version = content_version(docstore.sorted_chunk_ids(), self.settings.embed_model)
        documents, chunks = docstore.counts()
        # Shared mode: each host derives BM25 from the docstore, so no folder here is authoritative.
        bm25_current = manifest.bm25_dir is not None and (
            self.records.shared or (self.records.bm25_root / manifest.bm25_dir).is_dir()
        )
        if (
            version != manifest.version
            or not bm25_current
            or (documents, chunks) != (manifest.documents, manifest.chunks)
        ):
            # Shared mode: a reader on this host may have cached this version already (same content).
            bm25.Bm25Index.build(docstore.chunk_tokens()).save(
                self.records.bm25_root / version, replace=not self.records.shared
            )
            updated = dataclasses.replace(
                manifest,
                version=version,
                documents=documents,
                chunks=chunks,
                chunk_size=self._chunk_size or manifest.chunk_size,
                chunk_overlap=self.settings.chunk_overlap,
                bm25_dir=version,
                updated_at=now_iso(),
            )
            write_manifest(self.records.manifest_target, updated)
            bm25.prune_versions(self.records.bm25_root, keep={version, manifest.bm25_dir or version})
        report.version, report.documents, report.chunks = version, documents, chunks


def _no_hook(stage: Stage) -> None:
    """The default `on_stage`: nothing happens between the steps of a batch."""
