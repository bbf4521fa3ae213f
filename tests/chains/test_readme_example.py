"""The README's Python example runs as printed (against the test server and index)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from config.settings import REPO_ROOT

EXAMPLE = """
import asyncio

from chains import RagAgent, TurnResult
from config import load_settings

settings = load_settings()  # profile from RAG_PROFILE (default "balanced"), as `make serve` uses
with RagAgent.from_settings(settings) as agent:
    for piece in agent.stream("What does the warranty cover?", "readme-demo"):
        if isinstance(piece, TurnResult):
            print("\\n\\nSources:")
            for source in piece.sources:
                print(f"  [{source.id}] {source.label()}  (score {source.score:.3f})")
            print(f"cached={piece.cached}  total={piece.timings.total_s * 1000:.0f} ms")
        else:
            print(piece, end="", flush=True)

    follow_up = agent.invoke("And how long does it last?", "readme-demo")
    print("Rewritten as:", follow_up.standalone_question)

    results = asyncio.run(agent.abatch(["Who makes the X200?", "How long is shipping to Norway?"]))
    print([r.answer[:40] for r in results])
"""


@pytest.mark.integration
def test_readme_example_runs(tmp_path: Path, index_dir: Path, vllm_server: Any) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "HF_HUB_OFFLINE": "1",
        "RAG_PROFILE": "test",
        "RAG_LLM__BASE_URL": vllm_server.base_url,
        "RAG_LLM__MODEL": vllm_server.model,
        "RAG_INDEX__INDEX_DIR": str(index_dir),
        "RAG_CHAINS__CONVERSATIONS_DB": str(tmp_path / "conversations.sqlite"),
        "RAG_CACHE__DIR": str(tmp_path / "cache"),
    }
    out = subprocess.run(
        [sys.executable, "-c", EXAMPLE], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "\n\nSources:\n  [1] " in out.stdout and "cached=False" in out.stdout
    assert "Rewritten as: " in out.stdout and out.stdout.rstrip().endswith("]")
