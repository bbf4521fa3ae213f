"""Crafted .docx archives for the readers' limits (importable by tests: unlike `conftest`)."""

from __future__ import annotations

import io
import struct
import zipfile

BILLION_LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + b"".join(
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">'.encode() for i in range(1, 10)
    )
    + b']><w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
    b"<w:body><w:p><w:r><w:t>&lol9;</w:t></w:r></w:p></w:body></w:document>"
)
"""An XML entity bomb: a few hundred bytes that expand to 3 GB of text when entities are expanded."""


def docx_zip_bomb(unpacked_bytes: int) -> bytes:
    """A .docx whose word/document.xml is `unpacked_bytes` of spaces (deflate: about 1000x smaller)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        with archive.open("word/document.xml", "w", force_zip64=unpacked_bytes >= 1 << 31) as member:
            chunk = b" " * (1 << 22)
            written = 0
            while written < unpacked_bytes:
                member.write(chunk[: unpacked_bytes - written])
                written += len(chunk)
    return buf.getvalue()


def docx_with(document_xml: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("word/document.xml", document_xml)
    return buf.getvalue()


def with_declared_size(data: bytes, name: str, size: int) -> bytes:
    """The archive with `name`'s uncompressed size rewritten to `size` in its local header and its
    central-directory entry (what a crafted bomb does to slip past a size check)."""
    out = bytearray(data)
    encoded = name.encode()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        local = archive.getinfo(name).header_offset
    assert out[local : local + 4] == b"PK\x03\x04"
    struct.pack_into("<I", out, local + 22, size)
    central = out.find(b"PK\x01\x02")
    while central >= 0:
        name_len = struct.unpack_from("<H", out, central + 28)[0]
        if out[central + 46 : central + 46 + name_len] == encoded:
            struct.pack_into("<I", out, central + 24, size)
            return bytes(out)
        central = out.find(b"PK\x01\x02", central + 4)
    raise AssertionError(f"{name} has no central-directory entry")
