"""`index.chroma_mode=http`: ingest into and retrieve from a real Chroma server (`chroma run`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from config.settings import IndexSettings
from indexing import StoreUnavailableError, open_retriever
from indexing.report import IngestReport
from serving.launch import free_port
from tests.shared_servers import chroma_server as running_chroma

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with running_chroma(tmp_path_factory.mktemp("chroma-server")) as port:
        yield port


def test_ingest_and_retrieve_through_the_server(
    settings: IndexSettings, chroma_server: int, run_ingest: Callable[..., IngestReport], embed_model: Any
) -> None:
    remote = settings.model_copy(update={"chroma_mode": "http", "chroma_port": chroma_server})

    first = run_ingest(remote)
    again = run_ingest(remote)
    passages = open_retriever(remote, embed_model=embed_model).retrieve("bowline knot", top_k=2)

    assert first.ok and first.chunks > 0 and not (Path(settings.index_dir) / "chroma").exists()
    assert again.chunks_written == 0 and again.version == first.version
    assert passages[0].source == "sailing.docx"


def test_unreachable_server_is_a_clear_error(settings: IndexSettings, run_ingest: Callable[..., IngestReport]) -> None:
    nowhere = settings.model_copy(update={"chroma_mode": "http", "chroma_port": free_port()})
    with pytest.raises(StoreUnavailableError, match=r"cannot reach the Chroma server at 127\.0\.0\.1:\d+"):
        run_ingest(nowhere)
