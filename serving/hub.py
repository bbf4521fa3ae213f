"""Which model the demo serves when none is configured: a real one where a model hub answers,
else the offline tiny model.

The hub probe is one HTTP request with a short timeout, so an offline machine (or a closed
`HF_ENDPOINT`) decides in about two seconds instead of the minute a hub download spends retrying.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass

import httpx

from serving.command import Device

DEFAULT_ENDPOINT = "https://huggingface.co"
PROBE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class ModelChoice:
    """The serving settings a choice sets (`RAG_SERVING__*` values) and why it was made."""

    model: str | None
    """None keeps the configured default (the offline tiny model)."""
    reason: str
    quantization: str | None = None
    speculative_method: str | None = None
    draft_model: str | None = None

    def env(self) -> dict[str, str]:
        values = {
            "RAG_SERVING__MODEL": self.model,
            "RAG_SERVING__QUANTIZATION": self.quantization,
            "RAG_SERVING__SPECULATIVE_METHOD": self.speculative_method,
            "RAG_SERVING__DRAFT_MODEL": self.draft_model,
        }
        return {k: v for k, v in values.items() if v is not None}

    def shell(self) -> str:
        """`export` lines for a shell to eval (nothing when the default stays)."""
        return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(self.env().items()))


CPU_MODEL = "Qwen/Qwen2.5-1.5B-Instruct"
GPU_MODEL = "Qwen/Qwen2.5-7B-Instruct-AWQ"
GPU_DRAFT = "Qwen/Qwen2.5-0.5B-Instruct"


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def hub_reachable(endpoint: str | None = None, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """True when the hub's model API answers within `timeout_s` (any HTTP answer below 500)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    url = f"{endpoint or hub_endpoint()}/api/models/{CPU_MODEL}"
    try:
        response = httpx.get(url, timeout=httpx.Timeout(timeout_s), follow_redirects=False)
    except httpx.HTTPError:
        return False
    return response.status_code < 500


def choose_model(device: Device, *, hub_ok: bool) -> ModelChoice:
    """A small real instruct model for the device when the hub answers, else the tiny model."""
    if not hub_ok:
        return ModelChoice(None, f"no model hub answered at {hub_endpoint()}: serving the offline tiny model")
    if device == "cuda":
        return ModelChoice(
            GPU_MODEL,
            f"model hub reachable, GPU: {GPU_MODEL} with draft model {GPU_DRAFT}",
            quantization="awq",
            speculative_method="draft",
            draft_model=GPU_DRAFT,
        )
    return ModelChoice(CPU_MODEL, f"model hub reachable, CPU: {CPU_MODEL}")
