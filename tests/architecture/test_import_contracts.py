"""`make lint`'s import contracts (pyproject `[tool.importlinter]`) hold here and fail on a bad import.

Each case copies the packages and pyproject.toml to a temporary folder, adds one forbidden import
and runs `lint-imports` there, exactly as `make lint` runs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from config.settings import REPO_ROOT

PACKAGES = ("app", "chains", "indexing", "serving", "config", "bench")
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def copy_repo(target: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(REPO_ROOT / package, target / package, ignore=shutil.ignore_patterns("__pycache__", "results"))
    shutil.copy2(REPO_ROOT / "pyproject.toml", target / "pyproject.toml")
    return target


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_repository_keeps_every_contract(tmp_path: Path) -> None:
    done = lint_imports(copy_repo(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "bad_import", "contract"),
    [
        ("indexing/bad.py", "from langchain_core.documents import Document", "No LangChain in indexing"),
        ("indexing/bad.py", "import chains.agent", "Layers: app -> chains -> indexing"),
        ("config/bad.py", "import indexing.layout", "config imports no other part"),
        ("serving/bad.py", "from chains import RagAgent", "serving stands alone"),
        ("chains/bad.py", "import serving.launch", "The engine is reached over HTTP only"),
        ("chains/bad.py", "def f():\n    import vllm", "No vllm in the app env"),
    ],
)
def test_a_forbidden_import_breaks_the_lint(tmp_path: Path, module: str, bad_import: str, contract: str) -> None:
    root = copy_repo(tmp_path)
    (root / module).write_text(f'"""A deliberate violation."""\n\n{bad_import}\n', encoding="utf-8")
    done = lint_imports(root)
    assert done.returncode != 0
    broken = [line for line in done.stdout.splitlines() if line.startswith(contract)]
    assert broken and " BROKEN" in broken[0], done.stdout  # (an indirect import may break others too)
    assert f"{module.removesuffix('.py').replace('/', '.')} -> " in done.stdout  # the offending import is named
