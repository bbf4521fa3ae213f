"""`make demo` / `make stop`: the API and the UI in the background, two questions through the API.

    python -m app.demo start   # API + UI in the background (logs and pids in .run/), prints the URL
    python -m app.demo ask Q…  # each question through the API, streamed, with its sources
    python -m app.demo stop    # stop the UI and the API (the Makefile then stops the engine)

The engine and the index are started by the Makefile before this (`serving start`, `indexing
ingest`). Processes run in their own process groups so `stop` ends them with their children.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import webbrowser
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from config import load_settings
from config.settings import REPO_ROOT, Settings
from serving.launch import group_options, stop_process_group, tail

UI_PORT = int(os.environ.get("RAG_UI_PORT", "8501"))
"""Port of the Streamlit UI (`make app UI_PORT=...` sets it for both targets)."""
START_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class Service:
    """A background process of the demo: how to start it and how to tell it is up."""

    name: str
    command: list[str]
    health_url: str
    env: dict[str, str]
    """`RAG_*` overrides for this process only."""

    def pid_file(self, settings: Settings) -> Path:
        return settings.serving.run_dir / f"{self.name}.pid"

    def log_file(self, settings: Settings) -> Path:
        return settings.serving.run_dir / f"{self.name}.log"


def api_url(settings: Settings) -> str:
    return f"http://{settings.api.host}:{settings.api.port}"


def services(settings: Settings) -> list[Service]:
    python = sys.executable
    ui = [
        python, "-m", "streamlit", "run", str(REPO_ROOT / "app" / "ui.py"),
        "--server.address", "127.0.0.1", "--server.port", str(UI_PORT),
        "--server.headless", "true", "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal",
    ]  # fmt: skip
    # The semantic cache's faiss store is rewritten whole on every store: one process per cache
    # folder (docs/engineering-notes.md), so the UI process gets a folder of its own.
    ui_cache = settings.cache.dir.with_name(settings.cache.dir.name + "-ui")
    return [
        Service("api", [python, "-m", "app.api"], f"{api_url(settings)}/health", {}),
        Service("ui", ui, f"http://127.0.0.1:{UI_PORT}/_stcore/health", {"RAG_CACHE__DIR": str(ui_cache)}),
    ]


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _running(service: Service, settings: Settings) -> int | None:
    """The pid in the pid file if that process is still this service (a recycled pid is not)."""
    pid_file = service.pid_file(settings)
    try:
        pid = int(pid_file.read_text(encoding="utf-8").split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except (OSError, ValueError, IndexError):
        cmdline = []
    if cmdline[: len(service.command)] != service.command:
        pid_file.unlink(missing_ok=True)
        return None
    return pid


def start(settings: Settings) -> int:
    for service in services(settings):
        if _running(service, settings) is not None and _up(service.health_url):
            print(f"{service.name}: already running")
            continue
        service.pid_file(settings).parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "RAG_PROFILE": settings.profile, **service.env}
        with service.log_file(settings).open("ab") as log:
            process = subprocess.Popen(
                service.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=REPO_ROOT, env=env, **group_options(),
            )  # fmt: skip
        service.pid_file(settings).write_text(f"{process.pid}\n", encoding="utf-8")
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _up(service.health_url):
            if process.poll() is not None or time.monotonic() > deadline:
                why = "exited" if process.poll() is not None else f"not healthy after {START_TIMEOUT_S:.0f} s"
                print(f"{service.name} {why}; last log lines:\n{tail(service.log_file(settings))}", file=sys.stderr)
                stop(settings)
                return 1
            time.sleep(0.5)
        print(f"{service.name}: up (pid {process.pid}, log {service.log_file(settings)})")
    url = f"http://127.0.0.1:{UI_PORT}"
    print(f"\n>>> The chat UI: {url}   (the HTTP API: {api_url(settings)}/v1)\n")
    has_display = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or sys.platform == "darwin"
    if sys.stdin.isatty() and has_display:
        webbrowser.open(url)
    return 0


def ask(settings: Settings, questions: list[str]) -> int:
    """Each question through the API as an OpenAI client would, printed as it streams."""
    from openai import OpenAI

    key = settings.api.api_key.get_secret_value() if settings.api.api_key else "none"
    client = OpenAI(base_url=f"{api_url(settings)}/v1", api_key=key)
    conversation: str | None = None
    for question in questions:
        print(f"\n>>> {question}")
        stream = client.chat.completions.create(
            model=settings.llm.model or "",
            messages=[{"role": "user", "content": question}],
            stream=True,
            extra_headers={"X-Conversation-Id": conversation} if conversation else None,
        )
        final: dict[str, Any] = {}
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                print(chunk.choices[0].delta.content, end="", flush=True)
            final.update(chunk.model_extra or {})  # the last chunk carries sources and flags
        print()
        conversation = final.get("conversation_id") or conversation
        for source in final.get("sources") or []:
            print(f"  [{source['id']}] {source['label']}  (score {source['score']:.2f})")
        flags = [name for name in ("cached", "retrieval_only") if final.get(name)]
        if flags:
            print("  (" + ", ".join(flags) + ")")
    return 0


def stop(settings: Settings) -> int:
    for service in reversed(services(settings)):
        pid = _running(service, settings)
        if pid is None:
            continue
        stop_process_group(pid, settings.serving.shutdown_grace_s)
        service.pid_file(settings).unlink(missing_ok=True)
        print(f"{service.name}: stopped (pid {pid})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", help="settings profile (default: RAG_PROFILE or balanced)")
    parser.add_argument("action", choices=["start", "ask", "stop"])
    parser.add_argument("questions", nargs="*", help="for `ask`")
    args = parser.parse_args(argv)
    settings = load_settings(args.profile)
    if args.action == "start":
        return start(settings)
    if args.action == "ask":
        return ask(settings, args.questions)
    return stop(settings)


if __name__ == "__main__":
    sys.exit(main())
