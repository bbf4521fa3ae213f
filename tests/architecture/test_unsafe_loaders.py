"""No code of the project reaches an unsafe loader: GPTCache's YAML-config loader and server (its
open remote-code-execution reports, accepted in requirements/audit-allow.toml on this basis),
unsafe YAML, pickle or marshal. Read from the syntax tree, so docstrings that name them do not count."""

from __future__ import annotations

import ast

import pytest

from config.settings import REPO_ROOT

PARTS = ("app", "chains", "indexing", "serving", "config", "bench")
FORBIDDEN = {
    "init_similar_cache_from_config": "GPTCache loads its YAML config with an unsafe loader",
    "gptcache_server": "GPTCache's server",
    "unsafe_load": "unsafe YAML",
    "full_load": "unsafe YAML",
    "pickle": "pickle runs code from the data it loads",
    "marshal": "marshal",
    "dill": "dill",
}


def uses(source: str) -> list[tuple[int, str]]:
    """(line, name) of every forbidden name, attribute, import, and `yaml.load` call in `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Name):
            names = [node.id]
        elif isinstance(node, ast.Attribute):
            names = [node.attr]
            if node.attr == "load" and isinstance(node.value, ast.Name) and node.value.id == "yaml":
                names.append("unsafe_load")
        elif isinstance(node, ast.Import | ast.ImportFrom):
            module = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names = [part for alias in node.names for part in alias.name.split(".")] + [
                part for m in module for part in m.split(".")
            ]
        found += [(getattr(node, "lineno", 0), n) for n in names if n in FORBIDDEN]
    return found


def test_the_scan_finds_what_it_looks_for() -> None:
    bad = "import pickle\nimport yaml\nfrom gptcache.adapter.api import init_similar_cache_from_config\nyaml.load(x)\n"
    assert {name for _, name in uses(bad)} == {"pickle", "init_similar_cache_from_config", "unsafe_load"}
    assert uses('"""init_similar_cache_from_config is never called."""\nimport yaml\nyaml.safe_load(x)\n') == []


@pytest.mark.parametrize("part", PARTS)
def test_no_unsafe_loader_in_the_project(part: str) -> None:
    problems = [
        f"{path.relative_to(REPO_ROOT)}:{line}: {name} ({FORBIDDEN[name]})"
        for path in sorted((REPO_ROOT / part).rglob("*.py"))
        for line, name in uses(path.read_text(encoding="utf-8"))
    ]
    assert problems == []
