"""Every bad input the issue lists: a clear per-file reason, the rest ingested, nothing stored lost."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from pypdf import PdfReader, PdfWriter

from bench.corpus import pdf_bytes
from config.settings import IndexSettings
from indexing.errors import NotAnIndexError
from indexing.report import IngestReport
from tests.indexing.index_fixtures import FIXTURE_SOURCES, chroma_records
from tests.indexing.zip_bombs import BILLION_LAUGHS, docx_with, docx_zip_bomb, with_declared_size

Ingest = Callable[..., IngestReport]


def reasons(report: IngestReport) -> dict[str, str]:
    return {Path(p.path).name: p.reason for p in report.failed}


def encrypted_pdf() -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf_bytes(["Top secret launch codes."]))))
    writer.encrypt(user_password="secret", owner_password="owner", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


@pytest.fixture
def indexed(settings: IndexSettings, run_ingest: Ingest) -> dict[str, tuple[str, dict[str, object]]]:
    """The good corpus, already ingested: what must survive every bad run."""
    assert run_ingest(settings).ok
    return chroma_records(settings)


def assert_kept(settings: IndexSettings, before: dict[str, tuple[str, dict[str, object]]]) -> None:
    after = chroma_records(settings)
    assert before.items() <= after.items(), "chunks stored before the bad run were lost or changed"


BAD_FILES = [
    ("broken.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog >>\ngarbage without xref", "not a readable PDF"),
    ("locked.pdf", None, "encrypted PDF: a password is required"),
    ("image.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", "binary data in a text file"),
    ("latin1.md", "Café crème brûlée\n".encode("latin-1"), "not UTF-8 text: byte 0xe9 at offset 3"),
    ("empty.md", b"", "empty file"),
    ("blank.txt", b"   \n\n\t\n", "no text found"),
    ("fake.docx", b"this is not a zip archive", "not a valid DOCX file"),
    ("scan.pdf", pdf_bytes([""]), "no extractable text"),
    ("bomb.docx", docx_zip_bomb(8_000_000), "looks like a zip bomb"),
    ("laughs.docx", docx_with(BILLION_LAUGHS), "amplification"),
]


@pytest.mark.parametrize("case", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_file_is_reported_and_the_rest_kept(
    settings: IndexSettings,
    run_ingest: Ingest,
    indexed: dict[str, tuple[str, dict[str, object]]],
    case: tuple[str, bytes | None, str],
) -> None:
    name, content, expected = case
    docs = Path(settings.docs_dir)
    (docs / name).write_bytes(encrypted_pdf() if content is None else content)
    (docs / "fresh.md").write_text("# Fresh\n\nA good file added in the same run.\n", encoding="utf-8")

    report = run_ingest(settings)

    assert not report.ok
    assert expected in reasons(report)[name], report.summary()
    assert report.added == ["fresh.md"]
    assert_kept(settings, indexed)
    assert name in report.summary() and expected in report.summary()


def test_too_large_file_is_refused_without_reading(
    settings: IndexSettings, docs: Path, run_ingest: Ingest, indexed: dict[str, tuple[str, dict[str, object]]]
) -> None:
    (docs / "huge.txt").write_text("big " * 1000, encoding="utf-8")  # 4 kB against a 2 kB limit
    small_limit = settings.model_copy(update={"max_file_mb": 0.002})

    report = run_ingest(small_limit)

    assert "too large: 0.0 MB, above the 0.002 MB limit (index.max_file_mb)" in reasons(report)["huge.txt"]
    assert_kept(settings, indexed)


def test_symlink_loops_are_reported_not_followed(
    settings: IndexSettings, docs: Path, run_ingest: Ingest, indexed: dict[str, tuple[str, dict[str, object]]]
) -> None:
    (docs / "nested" / "back_to_top").symlink_to(docs, target_is_directory=True)
    (docs / "self.md").symlink_to(docs / "self.md")
    (docs / "dangling.md").symlink_to(docs / "missing.md")
    (docs / "alias.md").symlink_to(docs / "nested" / "chess.md")

    report = run_ingest(settings)

    found = reasons(report)
    assert found["back_to_top"].startswith("symlink loop: leads back to")
    assert found["self.md"].startswith("symlink loop")
    assert found["dangling.md"].startswith("broken symlink")
    assert any(p.reason.startswith("same file as") for p in report.skipped)  # no chunk indexed twice
    assert set(report.unchanged) == FIXTURE_SOURCES
    assert_kept(settings, indexed)
    assert len(chroma_records(settings)) == len(indexed)


def test_file_vanishing_during_ingest(
    settings: IndexSettings,
    docs: Path,
    run_ingest: Ingest,
    indexed: dict[str, tuple[str, dict[str, object]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another process deletes a file between the scan and the read."""
    (docs / "doomed.md").write_text("# Doomed\n\nDeleted while the ingest runs.\n", encoding="utf-8")
    (docs / "fresh.md").write_text("# Fresh\n\nStill here.\n", encoding="utf-8")
    real_read = Path.read_bytes

    def read_after_delete(path: Path) -> bytes:
        if path.name == "doomed.md":
            path.unlink()
        return real_read(path)

    monkeypatch.setattr(Path, "read_bytes", read_after_delete)
    report = run_ingest(settings)

    assert reasons(report)["doomed.md"].startswith("vanished during ingest")
    assert report.added == ["fresh.md"]
    assert_kept(settings, indexed)


def test_missing_path_is_a_failure_and_other_paths_still_ingest(
    settings: IndexSettings, docs: Path, tmp_path: Path, run_ingest: Ingest
) -> None:
    report = run_ingest(settings, [tmp_path / "no-such-folder", docs / "nested"])

    assert reasons(report) == {"no-such-folder": "no such file or directory"}
    assert report.added == ["nested/chess.md"]


def test_indexed_file_turning_corrupt_keeps_its_old_chunks(
    settings: IndexSettings, docs: Path, run_ingest: Ingest, indexed: dict[str, tuple[str, dict[str, object]]]
) -> None:
    (docs / "finance.pdf").write_bytes(b"%PDF-1.4 truncated")

    report = run_ingest(settings, prune=True)

    assert "not a readable PDF" in reasons(report)["finance.pdf"]
    assert report.removed == [] and report.version == report.version_before
    assert chroma_records(settings) == indexed


def test_unknown_extensions_are_skipped_and_listed_not_failed(
    settings: IndexSettings, docs: Path, run_ingest: Ingest
) -> None:
    (docs / "photo.jpg").write_bytes(b"\xff\xd8\xff")
    (docs / "Makefile").write_text("all:\n", encoding="utf-8")
    (docs / ".hidden.md").write_text("# Hidden\n", encoding="utf-8")

    report = run_ingest(settings)

    assert report.ok
    skipped = {Path(p.path).name: p.reason for p in report.skipped}
    assert skipped == {"photo.jpg": "unknown file type '.jpg'", "Makefile": "no file extension"}
    assert report.hidden == 1
    assert "photo.jpg: unknown file type" in report.summary()


def test_index_folder_that_is_not_an_index_is_refused_untouched(
    settings: IndexSettings, tmp_path: Path, run_ingest: Ingest
) -> None:
    foreign = tmp_path / "my-thesis"
    foreign.mkdir()
    (foreign / "chapter1.tex").write_text("precious", encoding="utf-8")

    with pytest.raises(NotAnIndexError, match=r"is not an index \(no manifest.json; it holds: chapter1.tex\)"):
        run_ingest(settings.model_copy(update={"index_dir": foreign}))

    assert sorted(os.listdir(foreign)) == ["chapter1.tex"]
    assert (foreign / "chapter1.tex").read_text(encoding="utf-8") == "precious"


def test_index_dir_that_is_a_file_is_refused(settings: IndexSettings, tmp_path: Path, run_ingest: Ingest) -> None:
    a_file = tmp_path / "index.txt"
    a_file.write_text("not a folder", encoding="utf-8")

    with pytest.raises(NotAnIndexError, match="it is a file"):
        run_ingest(settings.model_copy(update={"index_dir": a_file}))
    assert a_file.read_text(encoding="utf-8") == "not a folder"


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        # 1 GB declared: refused from the archive's directory, nothing inflated.
        (lambda: with_declared_size(docx_zip_bomb(2_000_000), "word/document.xml", 1 << 30), "above the 100 MB limit"),
        # 48 MB of text in 48 kB: the compression ratio gives it away.
        (lambda: docx_zip_bomb(48_000_000), "looks like a zip bomb"),
        # 48 MB of text declared as 2 kB: read no further than the declared size.
        (lambda: with_declared_size(docx_zip_bomb(48_000_000), "word/document.xml", 2_000), "damaged or crafted"),
    ],
    ids=["declared-1GB", "ratio", "lying-size"],
)
def test_docx_zip_bombs_are_refused_before_they_are_inflated(make: Callable[[], bytes], expected: str) -> None:
    import tracemalloc

    from indexing.errors import UnreadableFileError
    from indexing.readers import read_documents

    bomb = make()
    tracemalloc.start()
    try:
        with pytest.raises(UnreadableFileError, match=expected):
            read_documents(bomb, "bomb.docx", "docx", {})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000, f"{peak / 1e6:.0f} MB allocated while refusing: the bomb was inflated"
