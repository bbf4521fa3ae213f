"""Document files made from text, for the benchmarks, the test fixtures and the sample corpus.

`pdf_bytes` writes a small valid PDF (Helvetica, one text block per page) and `docx_bytes` a
minimal valid Word file, so no office suite or PDF library is needed to produce real files of
those formats. `write_corpus` builds a mixed-format corpus of any size from seed sentences.
"""

from __future__ import annotations

import html
import json
import random
import re
import textwrap
import zipfile
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from xml.sax.saxutils import escape

_PAGE_LINES = 48
_LINE_CHARS = 90


def pdf_bytes(pages: Sequence[str], title: str | None = None) -> bytes:
    """A PDF with one page per text (long texts are wrapped and flow onto further pages)."""
    page_lines: list[list[str]] = []
    for text in pages:
        lines = [w for para in text.split("\n") for w in (textwrap.wrap(para, _LINE_CHARS) or [""])]
        page_lines.extend(lines[i : i + _PAGE_LINES] for i in range(0, max(len(lines), 1), _PAGE_LINES))
    objects: list[bytes] = [
        b"",
        b"",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    info = f"<< /Title ({_pdf_escape(title)}) /Producer (ragchat bench.corpus) >>" if title else "<< >>"
    objects.append(info.encode("latin-1"))
    kids = []
    for lines in page_lines:
        ops = "BT /F1 11 Tf 14 TL 56 790 Td " + " ".join(f"({_pdf_escape(line)}) Tj T*" for line in lines) + " ET"
        stream = ops.encode("latin-1")
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
        content_id = len(objects)
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources << /Font << /F1 3 0 R >> >> "
            b"/Contents %d 0 R >>" % content_id
        )
        kids.append(len(objects))
    objects[0] = b"<< /Type /Catalog /Pages 2 0 R >>"
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (" ".join(f"{k} 0 R" for k in kids).encode(), len(kids))
    out = BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n%s\nendobj\n" % (number, body))
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    out.write(b"".join(b"%010d 00000 n \n" % off for off in offsets))
    out.write(b"trailer\n<< /Size %d /Root 1 0 R /Info 4 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def _pdf_escape(text: str) -> str:
    text = text.encode("cp1252", "replace").decode("cp1252")
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


_DOCX_TYPES = """<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">
<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>
<Default Extension="xml" ContentType="application/xml"/>
<Override PartName="/word/document.xml"
 ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/>
<Override PartName="/docProps/core.xml" ContentType="application/vnd.openxmlformats-package.core-properties+xml"/>
</Types>"""
_DOCX_RELS = """<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">
<Relationship Id="rId1" Target="word/document.xml"
 Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument"/>
<Relationship Id="rId2" Target="docProps/core.xml"
 Type="http://schemas.openxmlformats.org/package/2006/relationships/metadata/core-properties"/>
</Relationships>"""
_W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"


def docx_bytes(paragraphs: Sequence[str], title: str | None = None) -> bytes:
    """A Word document; a paragraph starting with `#`s becomes a heading of that level."""
    body = []
    for para in paragraphs:
        match = re.match(r"^(#{1,6})\s+(.*)$", para)
        style = f'<w:pPr><w:pStyle w:val="Heading{len(match.group(1))}"/></w:pPr>' if match else ""
        text = match.group(2) if match else para
        body.append(f'<w:p>{style}<w:r><w:t xml:space="preserve">{escape(text)}</w:t></w:r></w:p>')
    document = (
        f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<w:document xmlns:w="{_W}"><w:body>'
        + "".join(body)
        + "</w:body></w:document>"
    )
    core = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        '<cp:coreProperties xmlns:cp="http://schemas.openxmlformats.org/package/2006/metadata/core-properties" '
        'xmlns:dc="http://purl.org/dc/elements/1.1/">'
        f"<dc:title>{escape(title or '')}</dc:title></cp:coreProperties>"
    )
    out = BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        parts = {"[Content_Types].xml": _DOCX_TYPES, "_rels/.rels": _DOCX_RELS}
        parts |= {"word/document.xml": document, "docProps/core.xml": core}
        for name, xml in parts.items():  # fixed timestamps: the same text always gives the same bytes
            zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), xml, zipfile.ZIP_DEFLATED)
    return out.getvalue()


def seed_sentences(folder: Path) -> list[str]:
    """Sentences of the Markdown and text files under `folder` (the sample corpus makes good seed)."""
    sentences: list[str] = []
    for path in sorted(folder.rglob("*")):
        if path.suffix in (".md", ".txt") and path.is_file():
            text = re.sub(r"[#*`|>\[\]]", " ", path.read_text(encoding="utf-8"))
            sentences += [s.strip() for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())) if len(s.split()) >= 5]
    if not sentences:
        raise ValueError(f"no sentences found under {folder}")
    return sentences


_FORMATS = ("md", "md", "md", "txt", "txt", "html", "html", "pdf", "docx", "json")


def write_corpus(root: Path, files: int, sentences: Sequence[str], seed: int = 0) -> dict[str, int]:
    """`files` short documents (1-3 sections, one or two chunks), mixed formats; the count per extension."""
    rng = random.Random(seed)
    counts: dict[str, int] = {}
    for i in range(files):
        ext = _FORMATS[i % len(_FORMATS)]
        title = f"Document {i}: " + " ".join(rng.choice(sentences).split()[:4])
        sections = [
            (
                f"Section {s + 1}",
                [" ".join(rng.sample(list(sentences), rng.randint(2, 4))) for _ in range(rng.randint(1, 2))],
            )
            for s in range(rng.randint(1, 3))
        ]
        path = root / f"group{i % 20:02d}" / f"doc{i:05d}.{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_render(ext, title, sections))
        counts[ext] = counts.get(ext, 0) + 1
    return counts


def _render(ext: str, title: str, sections: list[tuple[str, list[str]]]) -> bytes:
    if ext == "md":
        parts = [f"# {title}"] + [f"## {h}\n\n" + "\n\n".join(ps) for h, ps in sections]
        return "\n\n".join(parts).encode()
    if ext == "txt":
        return "\n\n".join([title] + [p for _, ps in sections for p in ps]).encode()
    if ext == "html":
        head = f"<head><title>{html.escape(title)}</title></head>"
        body = "".join(
            f"<h2>{html.escape(h)}</h2>" + "".join(f"<p>{html.escape(p)}</p>" for p in ps) for h, ps in sections
        )
        return f"<html>{head}<body><h1>{html.escape(title)}</h1>{body}</body></html>".encode()
    if ext == "pdf":
        return pdf_bytes(["\n".join(ps) for _, ps in sections], title=title)
    if ext == "docx":
        return docx_bytes([f"# {title}"] + [x for h, ps in sections for x in (f"## {h}", *ps)], title=title)
    return json.dumps(
        {"title": title, "sections": [{"heading": h, "text": ps} for h, ps in sections]}, indent=1
    ).encode()
