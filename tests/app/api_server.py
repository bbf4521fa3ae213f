"""A real uvicorn server running the API in a background thread, on a free loopback port
(a module of its own: test files must not import from `conftest`)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI

from serving.launch import free_port

API_KEY = "test-key-8d1f"
"""The bearer key the test API server requires."""
UPLOAD_LIMIT_MB = 0.05
"""api.max_upload_mb of the test API server."""


@dataclass
class RunningApi:
    url: str
    """Root URL, e.g. http://127.0.0.1:PORT (the OpenAI base URL is url + "/v1")."""
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "the API server did not stop"


def start_api(app: FastAPI, startup_timeout_s: float = 300.0, log_level: str = "warning") -> RunningApi:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level=log_level, lifespan="on"))
    thread = threading.Thread(target=server.run, name="api-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the API server exited during start-up (see the log above)")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the API server did not start within {startup_timeout_s:g} s")
        time.sleep(0.05)
    return RunningApi(f"http://127.0.0.1:{port}", server, thread)
