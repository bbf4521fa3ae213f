"""Documents in the sidebar: upload, incremental ingest with progress, per-file results, the
document list with delete.

Ingest runs in the service's background thread; the page polls it from a fragment, so the chat
stays usable while files are indexed."""

from __future__ import annotations

import math
from pathlib import Path

import streamlit as st

from app.documents import DocumentError, IngestJob, UnknownDocumentError
from app.service import ChatService
from app.ui_format import size
from indexing.sources import FILE_TYPES

JOB_KEY = "ingest-job"
"""Session key of the ingest job this session started (its progress or results are shown)."""
UPLOAD_ROUND_KEY = "upload-round"
"""Bumped after each upload so the uploader starts empty again."""
REJECTED_KEY = "upload-rejected"
"""Files of the last upload that were refused, with the reasons."""
JOB_POLL_S = 1.0


def render_documents(service: ChatService) -> None:
    st.subheader("Documents", anchor=False)
    job = _current_job(service)
    busy = job is not None and not _finished(job)
    _upload(service, busy=busy)
    for name, reason in st.session_state.get(REJECTED_KEY, []):
        st.error(f"`{name}` not added: {reason}", icon=":material/block:")
    if job is not None:
        if busy:
            _progress(service, job.id)
        else:
            _results(job)
    _document_list(service)


def _current_job(service: ChatService) -> IngestJob | None:
    job_id = st.session_state.get(JOB_KEY)
    if not job_id:
        return None
    try:
        return service.job(job_id)
    except UnknownDocumentError:  # forgotten by the service (a restart, or long ago)
        del st.session_state[JOB_KEY]
        return None


def _finished(job: IngestJob) -> bool:
    return job.state in ("done", "failed")


def _upload(service: ChatService, *, busy: bool) -> None:
    round_ = st.session_state.setdefault(UPLOAD_ROUND_KEY, 0)
    limit_mb = service.settings.api.max_upload_mb
    files = st.file_uploader(
        "Add documents",
        accept_multiple_files=True,
        key=f"uploads-{round_}",
        max_upload_size=max(1, math.ceil(limit_mb)),
        help=f"Indexed: {', '.join(sorted(FILE_TYPES))}; at most {limit_mb:g} MB per file.",
    )
    if not files:
        return
    if st.button("Index uploaded files", icon=":material/upload_file:", disabled=busy, type="primary"):
        accepted: list[Path] = []
        rejected: list[tuple[str, str]] = []
        for file in files:  # one at a time: a bad file must not hold back the good ones
            try:
                accepted += [service.uploads_dir / s.name for s in service.save_uploads([(file.name, file.getvalue())])]
            except DocumentError as exc:
                rejected.append((file.name, str(exc)))
        st.session_state[REJECTED_KEY] = rejected
        if accepted:
            st.session_state[JOB_KEY] = service.start_ingest(accepted)
        st.session_state[UPLOAD_ROUND_KEY] = round_ + 1
        st.rerun()


@st.fragment(run_every=JOB_POLL_S)
def _progress(service: ChatService, job_id: str) -> None:
    """Polls the job; when it ends, redraws the whole page (index stats, document list, results)."""
    job = service.job(job_id)
    if _finished(job):
        st.rerun(scope="app")
    with st.status(f"Indexing {job.done} of {job.total} files…", expanded=True):
        st.progress(job.done / job.total if job.total else 0.0, text=job.current_file or "starting")


def _results(job: IngestJob) -> None:
    failed = [r for r in job.results if not r.ok]
    indexed = len(job.results) - len(failed)
    label = f"Indexed {indexed} of {len(job.results)} files" + (f", {len(failed)} failed" if failed else "")
    with st.status(label, state="error" if failed or job.error else "complete", expanded=bool(failed or job.error)):
        if job.error:
            st.error(job.error)
        for result in job.results:
            reason = f": {result.reason}" if result.reason else ""
            st.markdown(f"- `{result.path}` — {result.status}{reason}")


def _document_list(service: ChatService) -> None:
    documents = service.documents()
    with st.expander(f"{len(documents)} documents in the index", icon=":material/folder:"):
        for doc in documents:
            left, right = st.columns([5, 1], vertical_alignment="center")
            left.markdown(f"`{doc.path}`  \n{doc.chunks} chunks · {size(doc.bytes)}")
            right.button(
                "",
                key=f"delete-doc-{doc.path}",
                icon=":material/delete:",
                on_click=_delete_document,
                args=(service, doc.path),
                help="Remove the file and its passages from the index",
                type="tertiary",
            )


def _delete_document(service: ChatService, path: str) -> None:
    try:
        service.delete_document(path)
    except DocumentError as exc:
        st.toast(f"Could not delete `{path}`: {exc}", icon=":material/error:")
    else:
        st.toast(f"Deleted `{path}`: it will not be cited again", icon=":material/delete:")
