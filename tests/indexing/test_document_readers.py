"""The readers alone: LlamaIndex `load_data` on real files, structure kept, encodings handled."""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest

from bench.corpus import pdf_bytes
from indexing.errors import UnreadableFileError
from indexing.readers import HtmlReader, PdfReader, decode_text, markdown_title
from tests.indexing.index_fixtures import FINANCE_PAGES, GARDENING


def test_pdf_reader_loads_one_document_per_page(tmp_path: Path) -> None:
    path = tmp_path / "money.pdf"
    path.write_bytes(pdf_bytes(FINANCE_PAGES, title="Money matters"))

    docs = PdfReader().load_data(path)

    assert [d.metadata["page"] for d in docs] == [1, 2]
    assert all(d.metadata["title"] == "Money matters" for d in docs)
    assert "Compound interest" in docs[1].text and docs[1].id_.endswith("#page=2")


def test_html_reader_keeps_headings_as_markdown(tmp_path: Path) -> None:
    path = tmp_path / "garden.html"
    path.write_text(GARDENING, encoding="utf-8")

    [doc] = HtmlReader().load_data(path)

    assert doc.metadata["title"] == "Growing tomatoes"
    assert "# Growing tomatoes" in doc.text and "## Pests" in doc.text
    assert "<p>" not in doc.text


def test_markdown_title_skips_code_blocks() -> None:
    text = "```\n# not a title\n```\n\n## Sub\n\n# Real title\n"
    assert markdown_title(text) == "Real title"
    assert markdown_title("no headings here") is None


def test_text_decoding_accepts_utf8_and_bom_marked_utf16_only() -> None:
    assert decode_text(codecs.BOM_UTF8 + "héllo".encode()) == "héllo"
    assert decode_text("naïve".encode("utf-16")) == "naïve"
    with pytest.raises(UnreadableFileError, match="not UTF-8 text: byte 0xef at offset 2"):
        decode_text("naïve".encode("latin-1"))
