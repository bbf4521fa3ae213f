"""Property-based tests of the ingest readers: any bytes under any supported extension give text
or a clear UnreadableFileError, never another exception or a hang (hypothesis, bounded)."""

from __future__ import annotations

import io
import zipfile
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from indexing.errors import UnreadableFileError
from indexing.readers import read_documents

BOUNDED = settings(
    max_examples=40,
    database=None,  # no .hypothesis folder in the checkout; a failure prints its reproduction blob
    print_blob=True,
    deadline=timedelta(seconds=20),  # a hang guard, not a speed test: generous on a loaded machine
    suppress_health_check=[HealthCheck.too_slow],
)
TEXT_TYPES = ["text", "markdown", "csv", "json", "html"]


def _docx(document_xml: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("word/document.xml", document_xml)
    return buf.getvalue()


xml_fragments = st.lists(
    st.sampled_from(
        [
            b"<w:p>", b"</w:p>", b"<w:t>", b"</w:t>", b"<w:tab/>", b"hello", b"&amp;", b"&lol;", b"<!DOCTYPE x [",
            b"]>", b"\x00", b"\xff", "é".encode(), b"<", b">",
        ]
    ),
    max_size=40,
).map(b"".join)  # fmt: skip
ROOT = b'<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>'


def _read(data: bytes, file_type: str) -> None:
    try:
        docs = read_documents(data, f"f.{file_type}", file_type, {})
    except UnreadableFileError as exc:
        assert str(exc), "the reason is never empty"
        return
    assert docs and all(isinstance(d.text, str) for d in docs)
    assert any(d.text.strip() for d in docs)


@BOUNDED
@given(data=st.binary(max_size=4096), file_type=st.sampled_from([*TEXT_TYPES, "pdf", "docx"]))
def test_any_bytes_give_text_or_a_clear_error(data: bytes, file_type: str) -> None:
    _read(data, file_type)


@BOUNDED
@given(text=st.text(max_size=2000), encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1"]))
def test_any_text_in_any_encoding_gives_text_or_a_clear_error(text: str, encoding: str) -> None:
    for file_type in TEXT_TYPES:
        _read(text.encode(encoding, errors="replace"), file_type)


@BOUNDED
@given(body=st.binary(max_size=2048))
def test_damaged_pdfs_give_a_clear_error(body: bytes) -> None:
    _read(b"%PDF-1.4\n" + body + b"\n%%EOF", "pdf")


@BOUNDED
@given(inner=xml_fragments, wrap=st.booleans())
def test_docx_with_arbitrary_xml_gives_text_or_a_clear_error(inner: bytes, wrap: bool) -> None:
    _read(_docx(ROOT + inner + b"</w:body></w:document>" if wrap else inner), "docx")
