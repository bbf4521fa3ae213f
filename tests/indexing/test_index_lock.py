"""One writer per embedded index: a second ingest fails at once with a clear message."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from config.settings import IndexSettings
from indexing.errors import IndexLockedError
from indexing.layout import IndexLayout
from indexing.lock import WriterLock
from indexing.report import IngestReport


def test_second_writer_is_refused_and_the_lock_frees_after(
    settings: IndexSettings, run_ingest: Callable[..., IngestReport]
) -> None:
    assert run_ingest(settings).ok
    layout = IndexLayout(Path(settings.index_dir))

    with WriterLock(layout.lock), pytest.raises(IndexLockedError) as refused:
        run_ingest(settings)
    message = str(refused.value)
    assert f"being written by another ingest (pid {os.getpid()} on" in message
    assert "index.chroma_mode=http" in message

    again = run_ingest(settings)  # released: the next run proceeds
    assert again.ok and not again.changed


def test_lock_on_a_fresh_folder_does_not_make_it_foreign(tmp_path: Path) -> None:
    layout = IndexLayout(tmp_path / "index")
    layout.root.mkdir()
    with WriterLock(layout.lock):
        assert layout.state().value == "empty"
