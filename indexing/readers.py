"""LlamaIndex readers for each supported format, working from bytes already read and hashed.

Parsing the same bytes that were hashed means a file that changes mid-ingest can never be
stored under the other version's hash. Every failure becomes an UnreadableFileError whose
message is the per-file reason shown in the ingest summary.
"""

from __future__ import annotations

import codecs
import io
import re
import zipfile
from pathlib import Path
from typing import Any

from llama_index.core.readers.base import BaseReader
from llama_index.core.schema import Document

from indexing.errors import UnreadableFileError
from indexing.metadata import FILE_TYPE, PAGE, SOURCE, TITLE, hidden_keys

_HEADING_LINE = re.compile(r"^(#{1,6})\s+(\S.*?)\s*#*\s*$")
_BLOCK_TAGS = (
    "p", "div", "section", "article", "main", "header", "footer", "aside", "nav", "table", "tr", "ul", "ol",
    "dl", "dt", "dd", "pre", "blockquote", "figure", "figcaption", "caption", "form", "hr",
)  # fmt: skip


class _BytesReader(BaseReader):
    """A reader that can also parse bytes in hand (`parse`); `load_data` reads the path itself."""

    def load_data(self, file: Path, extra_info: dict[str, Any] | None = None) -> list[Document]:
        path = Path(file)
        return self.parse(path.read_bytes(), path.as_posix(), extra_info or {})

    def parse(self, data: bytes, doc_id: str, metadata: dict[str, Any]) -> list[Document]:
        raise NotImplementedError


def _document(text: str, doc_id: str, metadata: dict[str, Any]) -> Document:
    clean = {k: v for k, v in metadata.items() if v is not None}
    hidden = hidden_keys(clean)
    return Document(
        text=text, id_=doc_id, metadata=clean, excluded_embed_metadata_keys=hidden, excluded_llm_metadata_keys=hidden
    )


def decode_text(data: bytes) -> str:
    """UTF-8 (with or without BOM) or BOM-marked UTF-16; anything else is refused, not guessed."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise UnreadableFileError(f"damaged UTF-16 text ({exc.reason} at byte {exc.start})") from None
    nul = data.find(b"\x00")
    if nul >= 0:
        raise UnreadableFileError(f"binary data in a text file (NUL byte at offset {nul}); not indexed")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnreadableFileError(
            f"not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start} is invalid; "
            "convert the file to UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
        ) from None


def markdown_title(text: str) -> str | None:
    """The first level-1 heading outside code blocks."""
    in_code = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
            continue
        match = None if in_code else _HEADING_LINE.match(line)
        if match and len(match.group(1)) == 1:
            return match.group(2)
    return None


class TextReader(_BytesReader):
    """Plain text, Markdown, CSV and JSON: all indexed as their text."""

    def parse(self, data: bytes, doc_id: str, metadata: dict[str, Any]) -> list[Document]:
        text = decode_text(data)
        if metadata.get(FILE_TYPE) == "markdown":
            metadata = {**metadata, TITLE: markdown_title(text)}
        return [_document(text, doc_id, metadata)]


class HtmlReader(_BytesReader):
    """HTML as Markdown-like text: headings become `#` lines so the splitter keeps the structure."""

    def parse(self, data: bytes, doc_id: str, metadata: dict[str, Any]) -> list[Document]:
        from bs4 import BeautifulSoup
        from bs4.dammit import EncodingDetector

        try:
            markup = decode_text(data)
        except UnreadableFileError:
            declared = EncodingDetector.find_declared_encoding(data, is_html=True)
            if not declared or b"\x00" in data:
                raise
            try:
                markup = data.decode(declared)
            except (UnicodeDecodeError, LookupError):
                raise UnreadableFileError(f"HTML declares charset {declared!r} but does not decode with it") from None
        soup = BeautifulSoup(markup, "html.parser")
        title = soup.title.get_text(" ", strip=True) if soup.title else None
        for tag in soup(["script", "style", "noscript", "template", "head", "svg"]):
            tag.decompose()
        for heading in soup.find_all(re.compile(r"^h[1-6]$")):
            text = heading.get_text(" ", strip=True)
            heading.replace_with(f"\n\n{'#' * int(heading.name[1])} {text}\n\n" if text else "")
            if title is None and heading.name == "h1" and text:
                title = text
        for br in soup.find_all("br"):
            br.replace_with("\n")
        for item in soup.find_all("li"):
            item.insert_before("\n- ")
        for cell in soup.find_all(["td", "th"]):
            cell.insert_after(" | ")
        for block in soup.find_all(_BLOCK_TAGS):
            block.insert_after("\n\n")
        lines = (" ".join(line.split()) for line in soup.get_text().splitlines())
        text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
        return [_document(text, doc_id, {**metadata, TITLE: title})]


class PdfReader(_BytesReader):
    """One Document per page with text, `page` 1-based; encrypted files are tried with an empty password."""

    def parse(self, data: bytes, doc_id: str, metadata: dict[str, Any]) -> list[Document]:
        import pypdf
        from pypdf.errors import DependencyError

        try:
            pdf = pypdf.PdfReader(io.BytesIO(data))
            if pdf.is_encrypted:
                try:
                    opened = pdf.decrypt("")
                except DependencyError:
                    raise UnreadableFileError(
                        "encrypted PDF (AES); reading it needs the `cryptography` package"
                    ) from None
                if not opened:
                    raise UnreadableFileError("encrypted PDF: a password is required; not indexed")
            title = pdf.metadata.title if pdf.metadata else None
            pages = [(number, page.extract_text() or "") for number, page in enumerate(pdf.pages, start=1)]
        except UnreadableFileError:
            raise
        except Exception as exc:  # pypdf raises many types on damaged files; all mean the same here
            raise UnreadableFileError(f"not a readable PDF ({type(exc).__name__}: {exc})") from None
        meta = {**metadata, TITLE: title.strip() if isinstance(title, str) and title.strip() else None}
        docs = [_document(text, f"{doc_id}#page={n}", {**meta, PAGE: n}) for n, text in pages if text.strip()]
        if not docs:
            raise UnreadableFileError(f"no extractable text in {len(pages)} page(s) (a scanned PDF needs OCR first)")
        return docs


MAX_DOCX_TEXT_BYTES = 100_000_000
"""Most bytes the text parts of a .docx (body, headers, footers) may unpack to, together."""
MAX_DOCX_RATIO = 100
"""Highest compression ratio of a text part above `DOCX_RATIO_FLOOR` bytes (Word's XML compresses
about 5-20x; a zip bomb's parts thousands of times)."""
DOCX_RATIO_FLOOR = 1_000_000
_DOCX_TEXT_PARTS = (
    re.compile(r"word/header[0-9]*\.xml"),
    re.compile(r"word/document\.xml"),
    re.compile(r"word/footer[0-9]*\.xml"),
)


def _docx_text_parts(archive: zipfile.ZipFile) -> list[bytes]:
    """The XML of the body, headers and footers, in docx2txt's order, unpacked within limits.

    A .docx is a zip: sizes and ratios are checked from the archive's directory before anything
    is inflated, and each part is read no further than its declared size, since a crafted archive
    can declare a small size and inflate to gigabytes (zipfile itself would inflate it all)."""
    names = archive.namelist()
    if "word/document.xml" not in names:
        raise UnreadableFileError("not a valid DOCX file (word/document.xml is missing)")
    infos = [archive.getinfo(n) for pattern in _DOCX_TEXT_PARTS for n in names if pattern.fullmatch(n)]
    total = sum(info.file_size for info in infos)
    if total > MAX_DOCX_TEXT_BYTES:
        raise UnreadableFileError(
            f"DOCX text unpacks to {total / 1e6:.0f} MB, above the {MAX_DOCX_TEXT_BYTES / 1e6:.0f} MB limit "
            "(a zip bomb or a huge document); not unpacked"
        )
    parts = []
    for info in infos:
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > DOCX_RATIO_FLOOR and ratio > MAX_DOCX_RATIO:
            raise UnreadableFileError(
                f"DOCX part {info.filename} would unpack {ratio:.0f}x ({info.file_size / 1e6:.0f} MB), "
                f"above the {MAX_DOCX_RATIO}x limit: looks like a zip bomb; not unpacked"
            )
        try:
            with archive.open(info) as member:
                data = member.read(info.file_size + 1)
        except zipfile.BadZipFile as exc:  # e.g. more data than declared: the CRC check fails at that size
            raise UnreadableFileError(f"DOCX part {info.filename} is damaged or crafted ({exc})") from None
        if len(data) > info.file_size:
            raise UnreadableFileError(
                f"DOCX part {info.filename} unpacks to more than its declared size; damaged or crafted"
            )
        parts.append(data)
    return parts


class DocxReader(_BytesReader):
    """Word documents: docx2txt's text extraction over parts unpacked within size limits."""

    def parse(self, data: bytes, doc_id: str, metadata: dict[str, Any]) -> list[Document]:
        from docx2txt.docx2txt import xml2text

        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                text = "".join(xml2text(part) for part in _docx_text_parts(archive)).strip()
        except UnreadableFileError:
            raise
        except zipfile.BadZipFile:
            raise UnreadableFileError("not a valid DOCX file (not a zip archive: damaged or encrypted)") from None
        except Exception as exc:  # malformed XML inside the archive, an XML entity bomb (expat refuses it)
            raise UnreadableFileError(f"not a valid DOCX file ({type(exc).__name__}: {exc})") from None
        return [_document(text, doc_id, metadata)]


_READERS: dict[str, _BytesReader] = {
    "markdown": TextReader(),
    "text": TextReader(),
    "csv": TextReader(),
    "json": TextReader(),
    "html": HtmlReader(),
    "pdf": PdfReader(),
    "docx": DocxReader(),
}


def read_documents(data: bytes, source: str, file_type: str, extra: dict[str, Any]) -> list[Document]:
    """Documents for one file's bytes; raises UnreadableFileError with the reason if there is no text."""
    docs = _READERS[file_type].parse(data, source, {SOURCE: source, FILE_TYPE: file_type, **extra})
    if not any(doc.text.strip() for doc in docs):
        raise UnreadableFileError("no text found in the file")
    return docs
