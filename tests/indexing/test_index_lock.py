"""One writer per index. Embedded: a second ingest fails at once with a clear message. Shared mode
(PostgreSQL advisory lock): a second ingest waits, gives up after `index.lock_wait_s` naming the
holder, and a holder killed by SIGKILL frees the lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import SecretStr

from config.settings import IndexSettings
from indexing.errors import IndexLockedError
from indexing.layout import IndexLayout
from indexing.lock import SharedWriterLock, WriterLock
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
    assert "state.mode=shared" in message

    again = run_ingest(settings)  # released: the next run proceeds
    assert again.ok and not again.changed


def test_lock_on_a_fresh_folder_does_not_make_it_foreign(tmp_path: Path) -> None:
    layout = IndexLayout(tmp_path / "index")
    layout.root.mkdir()
    with WriterLock(layout.lock):
        assert layout.state().value == "empty"


@pytest.mark.integration
def test_shared_lock_makes_a_second_ingest_wait_then_names_the_holder(
    settings: IndexSettings, run_ingest: Callable[..., IngestReport], postgres_url: str
) -> None:
    shared = settings.model_copy(update={"state_url": SecretStr(postgres_url), "lock_wait_s": 0.5})
    name = f"{shared.chroma_host}:{shared.chroma_port}/{shared.collection}"

    with SharedWriterLock(postgres_url, name, 5), pytest.raises(IndexLockedError) as refused:
        run_ingest(shared)

    assert f"(ragchat ingest pid {os.getpid()} on" in str(refused.value)
    assert "waited 0.5 s (index.lock_wait_s)" in str(refused.value)
    assert not IndexLayout(Path(settings.index_dir)).lock.exists()  # no lock file in shared mode


@pytest.mark.integration
def test_shared_lock_is_freed_when_its_holder_is_killed(postgres_url: str) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from indexing.lock import SharedWriterLock\n"
            f"with SharedWriterLock({postgres_url!r}, 'killed', 5):\n"
            "    print('held', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(IndexLockedError), SharedWriterLock(postgres_url, "killed", 0.2):
            pass
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        with SharedWriterLock(postgres_url, "killed", 10) as lock:
            assert lock.name == "killed"
    finally:
        holder.kill()
        holder.wait()
