"""`import chains` stays light: no torch, no embedding model, no GPTCache, no settings read."""

from __future__ import annotations

import subprocess
import sys

from config.settings import REPO_ROOT


def test_importing_chains_loads_no_heavy_modules_and_reads_no_settings() -> None:
    code = (
        "import sys, config.settings as s\n"
        "s.load_settings = None\n"  # any settings read at import time would now fail
        "import chains\n"
        "from chains import RagAgent, TurnResult, QuestionError\n"
        "heavy = ('torch', 'transformers', 'gptcache', 'llama_index', 'chromadb', 'vllm')\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == ""
