"""The README's Python example runs as printed (against the test server and index)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from config.settings import REPO_ROOT

README_MARKER = "<!-- the block below is run verbatim by tests/chains/test_readme_example.py -->"


def readme_example() -> str:
    """The Python block that follows the marker in README.md: what users copy is what runs."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    after = text[text.index(README_MARKER) :]
    return after.split("```python\n", 1)[1].split("```", 1)[0]


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
        [sys.executable, "-c", readme_example()],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "\n\nSources:\n  [1] " in out.stdout and "cached=False" in out.stdout
    assert "Rewritten as: " in out.stdout and out.stdout.rstrip().endswith("]")
