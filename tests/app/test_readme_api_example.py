"""The README's HTTP API examples (curl and the openai client), run as written against a real
API server; only the address is swapped for the test server's."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from config.settings import REPO_ROOT
from tests.app.api_server import API_KEY
from tests.app.replicas import ApiUnderTest

pytestmark = [pytest.mark.integration]

MARKER = "<!-- the two blocks below are run by tests/app/test_readme_api_example.py against a real server -->"
README_URL = "http://127.0.0.1:8080"


def readme_blocks() -> tuple[str, str]:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert MARKER in text, "the README lost its API examples marker"
    bash, python = re.findall(r"```(?:bash|python)\n(.*?)```", text.split(MARKER, 1)[1], re.S)[:2]
    assert "curl" in bash and "OpenAI(" in python
    return bash, python


def run(command: list[str], api: ApiUnderTest, script: str) -> str:
    env = {**os.environ, "RAG_API_KEY": API_KEY}
    done = subprocess.run(
        command,
        check=False,
        input=script.replace(README_URL, api.url),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_readme_curl_example(api: ApiUnderTest) -> None:
    bash, _ = readme_blocks()
    answer, sources = run(["bash", "-euo", "pipefail"], api, bash).rstrip("\n").rsplit("\n", 1)
    assert answer.strip()
    assert sources.startswith("['user-guide/")


def test_readme_openai_example(api: ApiUnderTest) -> None:
    _, python = readme_blocks()
    out = run([sys.executable, "-"], api, python)
    assert out.startswith("Passages: ['user-guide/")
    assert "\nSources: ['user-guide/" in out and "cached: False" in out
    assert "/v1/documents/user-guide/" in out.splitlines()[-1]
