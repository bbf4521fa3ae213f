"""The chat UI in a real browser: Debian's chromium driven by Playwright (no browser download)
against `streamlit run` on a free loopback port, answering with the real vLLM engine on the
tiny model over a real index.

Each step leaves a screenshot in build/test-artifacts/ui/; with RAG_UI_SCREENSHOTS_TO_DOCS=1 they
are also copied to docs/img/ for the README.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from config.settings import REPO_ROOT
from serving.launch import free_port, stop_process_group, tail
from tests.app.ui_fixtures import ui_embed_model, ui_environment, ui_index_template
from tests.llm_server import LLMServer

__all__ = ["ui_embed_model", "ui_index_template"]  # fixtures used by name below

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ARTIFACTS = REPO_ROOT / "build" / "test-artifacts" / "ui"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MAX_TOKENS = 1000
"""Long answers (with `ignore_eos`, always this long), so that Stop lands while one is still being generated."""
TIMEOUT_MS = 90_000


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("RAG_UI_SCREENSHOTS_TO_DOCS") == "1":
        (REPO_ROOT / "docs" / "img").mkdir(parents=True, exist_ok=True)
        shutil.copy(path, REPO_ROOT / "docs" / "img" / path.name)
    return path


@pytest.fixture(scope="module")
def ui_url(tmp_path_factory: pytest.TempPathFactory, ui_index_template: Path, vllm_server: LLMServer) -> Iterator[str]:
    """`streamlit run app/ui.py` on a free loopback port over a private copy of the index."""
    root = tmp_path_factory.mktemp("ui-browser")
    env = {
        **os.environ,
        **ui_environment(root, ui_index_template, vllm_server.base_url, vllm_server.model),
        "RAG_LLM__MAX_TOKENS": str(MAX_TOKENS),
        # Every answer runs to MAX_TOKENS: the random model otherwise stops by itself after a few
        # hundred tokens, about a second on an idle machine, and Stop raced the end of the answer.
        "RAG_LLM__EXTRA_BODY": json.dumps({"ignore_eos": True}),
        "PYTHONPATH": str(REPO_ROOT),
    }
    port = free_port()
    log_path = root / "streamlit.log"
    command = [
        sys.executable, "-m", "streamlit", "run", str(REPO_ROOT / "app" / "ui.py"),
        "--server.address", "127.0.0.1", "--server.port", str(port), "--server.headless", "true",
        "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none", "--client.toolbarMode", "minimal",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/_stcore/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, f"streamlit exited:\n{tail(log_path)}"
            assert time.monotonic() < deadline, f"streamlit not healthy after 60 s:\n{tail(log_path)}"
            time.sleep(0.3)
        yield url
    finally:
        stop_process_group(process.pid, 10)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(log_path, ARTIFACTS / "streamlit.log")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, ui_url: str) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(ui_url)
    page.get_by_test_id("stChatInputTextArea").wait_for()
    yield page
    context.close()


def ask(page: Any, question: str) -> None:
    box = page.get_by_test_id("stChatInputTextArea")
    box.fill(question)
    box.press("Enter")


def running_requests(server: LLMServer) -> float:
    match = re.search(r"^vllm:num_requests_running\{[^}]*\} ([0-9.e+]+)$", server.metrics(), re.MULTILINE)
    assert match, "vLLM /metrics has no vllm:num_requests_running"
    return float(match.group(1))


def test_ask_streams_an_answer_with_its_sources(page: Any) -> None:
    screenshot(page, "ui-01-start")
    ask(page, "How do I add my own documents to the index?")
    answer = page.get_by_test_id("stChatMessage").nth(1)
    answer.get_by_text("total").wait_for()  # the timing line: the stored turn is redrawn
    sources = answer.get_by_test_id("stExpander")
    assert sources.count() >= 1
    first = sources.first
    assert re.search(r"^\[1\] .+ · score \d\.\d\d$", first.inner_text(), re.MULTILINE)
    first.click()
    first.get_by_test_id("stText").wait_for()
    page.wait_for_timeout(500)  # the expander's opening animation
    screenshot(page, "ui-02-answer-with-sources")
    assert page.get_by_test_id("stFeedback").count() == 1


def test_an_uploaded_file_is_indexed_and_counted(page: Any, tmp_path: Path) -> None:
    documents = page.get_by_test_id("stSidebar").get_by_test_id("stMetric").filter(has_text="Documents")
    before = int(documents.get_by_test_id("stMetricValue").inner_text())
    upload = tmp_path / "warranty-terms.md"
    upload.write_text("# Warranty terms\n\nThe Z9 kettle is covered for three years.\n", encoding="utf-8")
    page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(upload))
    page.get_by_role("button", name="Index uploaded files").click()
    page.get_by_text(re.compile(r"Indexed 1 of 1 files")).wait_for()
    documents.get_by_test_id("stMetricValue").filter(has_text=str(before + 1)).wait_for()
    screenshot(page, "ui-03-uploaded-and-indexed")


def test_stop_cancels_the_answer_on_the_engine_and_keeps_it_marked(page: Any, vllm_server: LLMServer) -> None:
    # A number of its own, so an earlier complete answer to this question is never a cache hit
    # (the cache's numbers guard): a cached answer comes whole and cannot be stopped.
    ask(page, f"Explain everything about hybrid retrieval and the semantic cache in {time.time_ns() % 10**6} points.")
    stop = page.get_by_test_id("stMainBlockContainer").get_by_role("button", name="Stop")
    stop.wait_for()
    answer = page.get_by_test_id("stChatMessage").nth(1)
    # Press Stop as soon as it shows: on an idle machine the tiny model writes its whole answer in
    # about a second, so waiting for the first chunk raced the end of the answer. Stopping before
    # or just after the first token must both end marked "stopped".
    # The button's own click handler, dispatched on it: under load the streamed answer's text can
    # overlap it and the redraw can move it, and Playwright's pointer click waited that out until
    # the answer had ended (2 of 10 repeated runs at load 47).
    stop.dispatch_event("click")
    answer.get_by_text(re.compile(r"\bstopped$")).wait_for()
    deadline = time.monotonic() + 60  # a shared engine may be busy with other clients meanwhile
    while running_requests(vllm_server) > 0:  # the model request was cancelled, not left running
        assert time.monotonic() < deadline, "the engine still runs requests a minute after Stop"
        time.sleep(0.1)
    screenshot(page, "ui-04-stopped")
    page.reload()
    page.get_by_test_id("stChatMessage").nth(1).get_by_text(re.compile(r"\bstopped$")).wait_for()
