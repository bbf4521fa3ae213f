"""Uploaded file names are made safe before anything touches the disk (pure function, no servers)."""

from __future__ import annotations

import pytest

from app.documents import sanitise_name


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd.md", "passwd.md"),
        ("C:\\Users\\me\\notes.txt", "notes.txt"),
        ("..", "upload"),
        (".env", "env"),
        ("ｆｕｌｌｗｉｄｔｈ.md", "fullwidth.md"),
        ("a" * 300 + ".md", "a" * 117 + ".md"),
    ],
)
def test_sanitised_names(name: str, safe: str) -> None:
    assert sanitise_name(name) == safe
