"""What the benchmarks share: the chat server they measure against, the machine, the result files."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from config.settings import Settings


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """`--base-url` and `--model`, the arguments of `chat_server`."""
    parser.add_argument("--base-url", help="use this running OpenAI-compatible server instead of starting vLLM")
    parser.add_argument("--model", help="served model name at --base-url (default: the first it lists)")


@contextlib.contextmanager
def chat_server(settings: Settings, base_url: str | None, model: str | None = None) -> Iterator[str]:
    """Point `settings.llm` at `base_url` (serving `model`, else the first model it lists), or at a
    vLLM server started here for `settings.serving` on a free port and stopped on exit. Yields what
    was used, for the results."""
    if base_url:
        settings.llm.base_url = base_url.rstrip("/")
        settings.llm.model = model or httpx.get(f"{settings.llm.base_url}/models").json()["data"][0]["id"]
        yield settings.llm.base_url
        return
    from serving.launch import EngineServer, free_port

    settings.serving.port = free_port()
    settings.llm.base_url = f"http://127.0.0.1:{settings.serving.port}/v1"
    with EngineServer(settings.serving).start():
        yield f"started by the benchmark: {settings.serving.model}"


def machine() -> dict[str, Any]:
    """Where and when a benchmark ran (load averages are recorded by each benchmark around its timing)."""
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "when": time.strftime("%Y-%m-%d %H:%M:%S")}


def write_results(
    result: dict[str, Any], out: Path, name: str, plot: Callable[[dict[str, Any], Path], None], table: str
) -> None:
    """`out/name.json` and `out/name.png`, then the table on stdout."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    plot(result, out / f"{name}.png")
    print(table)
    print(f"\nwrote {out / f'{name}.json'} and {out / f'{name}.png'}", file=sys.stderr)
