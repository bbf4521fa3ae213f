"""The follow-up set's gold evidence must stay true of the sample documents: an edit of a page
that drops the quoted text would silently turn every retrieval of it into a miss."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench.followups import DEFAULT_SET, load_set
from config.settings import REPO_ROOT
from indexing.readers import read_documents
from indexing.sources import FILE_TYPES

DOCS = REPO_ROOT / "data" / "docs"


def _text(path: Path) -> str:
    docs = read_documents(path.read_bytes(), path.name, FILE_TYPES[path.suffix.lower()], {})
    return re.sub(r"\s+", " ", " ".join(doc.text for doc in docs)).lower()


def test_every_gold_evidence_is_in_its_sample_document() -> None:
    items = load_set(DEFAULT_SET)
    assert items
    texts: dict[str, str] = {}
    missing = []
    for item in items:
        for file, evidence in item.gold:
            if file not in texts:
                texts[file] = _text(DOCS / file)
            if re.sub(r"\s+", " ", evidence).lower() not in texts[file]:
                missing.append(f"{item.conversation}: {evidence!r} not in {file}")
    assert not missing, "\n".join(missing)


@pytest.mark.parametrize("half", ["tune", "report"])
def test_both_halves_have_follow_ups(half: str) -> None:
    assert any(item.half == half for item in load_set(DEFAULT_SET))
