"""What tests need of a running OpenAI-compatible server (a module of its own: test files
must not import from `conftest`, several of which exist)."""

from __future__ import annotations

from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class LLMServer:
    """What tests need of a running OpenAI-compatible server."""

    base_url: str
    """OpenAI base URL, ending in `/v1`."""
    model: str
    """Served model name to put in requests."""

    @property
    def root_url(self) -> str:
        return self.base_url.removesuffix("/").removesuffix("/v1")

    def metrics(self) -> str:
        response = httpx.get(f"{self.root_url}/metrics", timeout=10.0)
        response.raise_for_status()
        return response.text
