"""API replicas for shared-state tests: `python -m app.api` processes over one PostgreSQL and one
Chroma server, each with private local files (a module of its own: test files must not import
from `conftest`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from config.settings import REPO_ROOT
from serving.launch import free_port
from tests.app.api_server import API_KEY
from tests.llm_server import LLMServer
from tests.shared_servers import stop_process


@dataclass
class Shared:
    postgres_url: str
    chroma_port: int
    root: Path
    keys_file: Path | None = None
    """With a keys file the replicas serve its tenants (data under `root/tenants`), else one tenant."""


@dataclass
class Replica:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def chat(
        self, question: str, conversation_id: str | None = None, key: str = API_KEY, **extra: Any
    ) -> dict[str, Any]:
        body = {"messages": [{"role": "user", "content": question}], **extra}  # llm.max_tokens is small
        if conversation_id:
            body["conversation_id"] = conversation_id
        response = httpx.post(
            f"{self.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=180
        )
        assert response.status_code == 200, response.text
        return dict(response.json())


def shared_env(shared: Shared, llm: LLMServer, own: Path) -> dict[str, str]:
    """Settings of one process in shared mode: shared servers and folders, private local files."""
    auth = (
        {"RAG_API__API_KEY": API_KEY}
        if shared.keys_file is None
        else {"RAG_API__KEYS_FILE": str(shared.keys_file), "RAG_API__TENANTS_DIR": str(shared.root / "tenants")}
    )
    return {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "HF_HUB_OFFLINE": "1",
        "RAG_PROFILE": "test",
        "RAG_STATE__MODE": "shared",
        "RAG_STATE__POSTGRES_URL": shared.postgres_url,
        "RAG_INDEX__CHROMA_PORT": str(shared.chroma_port),
        "RAG_INDEX__INDEX_DIR": str(shared.root / "index"),
        "RAG_INDEX__DOCS_DIR": str(shared.root / "docs"),
        "RAG_INDEX__TOP_K": "3",
        "RAG_LLM__BASE_URL": llm.base_url,
        "RAG_LLM__MODEL": llm.model,
        "RAG_LLM__MAX_TOKENS": "16",
        # Private per process: in shared mode none of these may be where shared state ends up.
        "RAG_CACHE__DIR": str(own / "cache"),
        "RAG_CHAINS__CONVERSATIONS_DB": str(own / "conversations.sqlite"),
        "RAG_API__STORE_DB": str(own / "app.sqlite"),
        **auth,
    }


def start_replica(shared: Shared, llm: LLMServer, name: str) -> Replica:
    own = shared.root / name
    own.mkdir()
    port = free_port()
    log = own / "api.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.api", "--port", str(port)],
            env=shared_env(shared, llm, own),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Replica(f"http://127.0.0.1:{port}", proc, log)


def wait_ready(replica: Replica, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            httpx.get(f"{replica.url}/health", timeout=5)
            return
        except httpx.HTTPError:
            if replica.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"API replica did not start:\n{replica.log.read_text()[-3000:]}")
            time.sleep(0.5)


@contextmanager
def two_replicas(shared: Shared, llm: LLMServer) -> Iterator[tuple[Replica, Replica]]:
    """Replicas `a` and `b`, started at the same moment, stopped on exit."""
    a, b = start_replica(shared, llm, "a"), start_replica(shared, llm, "b")
    try:
        wait_ready(a)
        wait_ready(b)
        yield a, b
    finally:
        stop_process(a.proc, 60)
        stop_process(b.proc, 60)


async def checkpointed_texts(url: str, conversation: str) -> list[str]:
    """The human messages of the conversation's LangGraph checkpoint in PostgreSQL (what its agent remembers)."""
    from chains.conversations import close_checkpointer, open_postgres_checkpointer, thread_config

    saver = await open_postgres_checkpointer(url)
    try:
        state = await saver.aget_tuple(thread_config(conversation))
    finally:
        await close_checkpointer(saver)
    assert state is not None, "no checkpoint of the conversation in PostgreSQL"
    return [str(m.content) for m in state.checkpoint["channel_values"]["messages"] if m.type == "human"]
