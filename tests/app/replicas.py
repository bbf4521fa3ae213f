"""Shared-state mode for tests: API replicas as real `python -m app.api` processes over one
PostgreSQL and one Chroma server, and a round-robin front that sends each HTTP request to the next
replica in turn, so the API tests run unchanged against two replicas and every request they make
after another lands on the other replica (a module of its own: test files must not import from
`conftest`)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse

from app.store import ChatStore, ChatTurn
from config.settings import REPO_ROOT, sqlalchemy_url
from serving.launch import free_port
from tests.app.api_server import API_KEY, UPLOAD_LIMIT_MB, start_api
from tests.llm_server import LLMServer
from tests.shared_servers import stop_process

AUTH = {"Authorization": f"Bearer {API_KEY}"}
HOP_BY_HOP = {b"host", b"connection", b"keep-alive", b"content-length", b"transfer-encoding"}
"""Headers that describe one connection, not the request: the front sets its own."""


@dataclass
class Shared:
    postgres_url: str
    chroma_port: int
    root: Path
    """Holds the shared documents folder (`docs`) and index folder, and each replica's private folder."""
    keys_file: Path | None = None
    """With a keys file the replicas serve its tenants (data under `root/tenants`), else one tenant."""


@dataclass
class Replica:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def chat(
        self, question: str, conversation_id: str | None = None, key: str = API_KEY, **extra: Any
    ) -> dict[str, Any]:
        body = {"messages": [{"role": "user", "content": question}], **extra}  # llm.max_tokens is small
        if conversation_id:
            body["conversation_id"] = conversation_id
        headers = {"Authorization": f"Bearer {key}"}
        response = httpx.post(f"{self.url}/v1/chat/completions", json=body, headers=headers, timeout=180)
        assert response.status_code == 200, response.text
        return dict(response.json())


@dataclass
class ApiUnderTest:
    """What the API tests talk to: the one embedded API process, or the front of two shared-mode
    replicas. `history()` reads the turn store the API writes (SQLite file, or PostgreSQL)."""

    mode: Literal["embedded", "shared"]
    url: str
    """Root URL, e.g. http://127.0.0.1:PORT (the OpenAI base URL is url + "/v1")."""
    docs_dir: Path
    store_url: str
    served_by: list[str] = field(default_factory=list)
    """Shared mode: the replica that answered each request, in order."""

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def history(self, conversation_id: str) -> list[ChatTurn]:
        store = ChatStore(self.store_url)
        try:
            return store.turns(conversation_id)
        finally:
            store.close()


def shared_env(shared: Shared, llm: LLMServer, own: Path) -> dict[str, str]:
    """Settings of one process in shared mode: shared servers and folders, private local files;
    otherwise the embedded test API's settings (tests/app/conftest.py `api_settings`)."""
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
        "RAG_LLM__MAX_TOKENS": "48",
        # Private per process: in shared mode none of these may be where shared state ends up.
        "RAG_CACHE__DIR": str(own / "cache"),
        "RAG_CHAINS__CONVERSATIONS_DB": str(own / "conversations.sqlite"),
        "RAG_API__STORE_DB": str(own / "app.sqlite"),
        "RAG_API__MAX_UPLOAD_MB": str(UPLOAD_LIMIT_MB),
        **auth,
    }


def start_replica(shared: Shared, llm: LLMServer, name: str, extra_env: dict[str, str] | None = None) -> Replica:
    own = shared.root / name
    own.mkdir()
    port = free_port()
    log = own / "api.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.api", "--port", str(port)],
            env={**shared_env(shared, llm, own), **(extra_env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Replica(name, f"http://127.0.0.1:{port}", proc, log)


def wait_ready(replica: Replica, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            httpx.get(f"{replica.url}/health", timeout=5)
            return
        except httpx.HTTPError:
            if replica.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"API replica {replica.name} did not start:\n{replica.log.read_text()[-3000:]}")
            time.sleep(0.5)


@contextmanager
def replica_pair(
    shared: Shared, llm: LLMServer, prefix: str = "", extra_env: dict[str, str] | None = None
) -> Iterator[tuple[Replica, Replica]]:
    """Two replicas started at the same moment (on an empty index both build it, one after the
    other: the lock), stopped at the end."""
    a = start_replica(shared, llm, f"{prefix}a", extra_env)
    b = start_replica(shared, llm, f"{prefix}b", extra_env)
    try:
        wait_ready(a)
        wait_ready(b)
        yield a, b
    finally:
        stop_process(a.proc, 60)
        stop_process(b.proc, 60)


@contextmanager
def front_of(shared: Shared, replicas: Sequence[Replica]) -> Iterator[ApiUnderTest]:
    """The replicas behind one round-robin URL; at the end, every replica must have answered."""
    served_by: list[str] = []
    front = start_api(round_robin_front(replicas, served_by))
    try:
        yield ApiUnderTest("shared", front.url, shared.root / "docs", sqlalchemy_url(shared.postgres_url), served_by)
    finally:
        front.stop()
    assert {r.name for r in replicas} <= set(served_by), f"a replica answered nothing: {served_by}"


def round_robin_front(replicas: Sequence[Replica], served_by: list[str]) -> FastAPI:
    """Each request to the next replica, whatever connection it came on (so one OpenAI client's
    two calls land on two replicas); bodies are read whole (test bodies are small), answers are
    streamed through as they come, and the replica's name is appended to `served_by`."""
    turn = itertools.cycle(replicas)
    clients: list[httpx.AsyncClient] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with httpx.AsyncClient(timeout=httpx.Timeout(600.0)) as client:
            clients.append(client)
            yield

    app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"])
    async def forward(request: Request) -> Response:
        replica = next(turn)
        served_by.append(replica.name)
        raw_path = request.scope["raw_path"].decode("latin-1")  # as sent: %2F stays encoded
        url = f"{replica.url}{raw_path}" + (f"?{request.url.query}" if request.url.query else "")
        headers = [(k, v) for k, v in request.headers.raw if k.lower() not in HOP_BY_HOP]
        outgoing = clients[0].build_request(request.method, url, headers=headers, content=await request.body())
        answer = await clients[0].send(outgoing, stream=True)

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in answer.aiter_raw():
                    yield chunk
            finally:
                await answer.aclose()

        response = StreamingResponse(relay(), status_code=answer.status_code)
        response.raw_headers = [(k, v) for k, v in answer.headers.raw if k.lower() not in HOP_BY_HOP]
        return response

    return app


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
