"""The chat page driven by Streamlit's AppTest, over the real service: real index, real cache,
the real vLLM engine on the tiny model (or a dead port for the engine-down banner)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from app.ui_session import open_resources
from config import load_settings
from config.settings import REPO_ROOT
from tests.app.ui_fixtures import ui_embed_model, ui_environment, ui_index_template
from tests.llm_server import LLMServer

__all__ = ["ui_embed_model", "ui_index_template"]  # fixtures used by name below

pytestmark = pytest.mark.integration

SCRIPT = str(REPO_ROOT / "app" / "ui.py")
RUN_TIMEOUT_S = 180
DEAD_ENGINE = "http://127.0.0.1:9/v1"


@pytest.fixture
def ui_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ui_index_template: Path, vllm_server: LLMServer
) -> Callable[..., dict[str, str]]:
    """Point the UI at a private copy of the index; `engine=DEAD_ENGINE` for a server that is down."""

    def apply(engine: str | None = None) -> dict[str, str]:
        env = ui_environment(tmp_path, ui_index_template, engine or vllm_server.base_url, vllm_server.model)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return env

    return apply


@pytest.fixture(autouse=True)
def release_service() -> Iterator[None]:
    """Each test's service (one per configuration) is closed when the test ends."""
    yield
    st.cache_resource.clear()


def start(timeout: float = RUN_TIMEOUT_S) -> AppTest:
    app = AppTest.from_file(SCRIPT, default_timeout=timeout)
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def ask(app: AppTest, question: str) -> AppTest:
    app.chat_input[0].set_value(question).run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def words(text: str) -> list[str]:
    """Text as words: st.markdown dedents what it shows."""
    return text.split()


def markdown_text(node: Any) -> str:
    return "\n".join(m.value for m in node.markdown)


def service() -> Any:
    """The service the page uses (the process-wide one for the current RAG_* environment)."""
    return open_resources(load_settings()).service


def test_a_question_is_answered_with_sources_timings_and_feedback(ui_env: Callable[..., dict[str, str]]) -> None:
    ui_env()
    app = start()
    assert not app.warning, "no engine-down banner while the engine answers"
    ask(app, "How do I add my own documents to the index?")
    user, assistant = app.chat_message
    assert user.markdown[0].value == "How do I add my own documents to the index?"
    stored = service().history(app.query_params["c"])
    assert len(stored) == 1
    assert words(assistant.markdown[0].value) == words(stored[0].answer), "the page shows the stored answer"
    titles = [e.label for e in assistant.expander]
    assert titles and titles[0].startswith("[1] ")
    assert len(titles) == len(stored[0].sources)
    assert "total" in assistant.caption[0].value
    assert len(app.feedback) == 1


def test_a_repeated_question_shows_the_cache_badge(ui_env: Callable[..., dict[str, str]]) -> None:
    ui_env()
    app = start()
    ask(app, "Which file formats can it read?")
    assert "from cache" not in markdown_text(app.chat_message[1])
    first = app.query_params["c"]
    next(b for b in app.sidebar.button if b.label == "New conversation").click().run()
    assert app.query_params["c"] != first
    assert not app.chat_message
    ask(app, "Which file formats can it read?")  # a new conversation: no follow-up rewrite
    badges = markdown_text(app.chat_message[1])
    assert re.search(r"from cache · similarity 1\.00", badges), badges
    assert "Hit rate" in [m.label for m in app.sidebar.metric]


def test_engine_down_shows_the_banner_and_a_retrieval_only_answer(ui_env: Callable[..., dict[str, str]]) -> None:
    ui_env(engine=DEAD_ENGINE)
    app = start()
    assert any("not answering" in w.value for w in app.warning)
    ask(app, "How do I add my own documents to the index?")
    assistant = app.chat_message[1]
    assert "retrieval only" in markdown_text(assistant)
    assert assistant.expander, "a retrieval-only answer still lists its passages"


def test_the_offline_model_banner_names_the_model(ui_env: Callable[..., dict[str, str]]) -> None:
    ui_env()
    app = start()
    assert any("Offline demo model" in i.value for i in app.info)


def test_feedback_is_stored_with_the_turn(ui_env: Callable[..., dict[str, str]]) -> None:
    ui_env()
    app = start()
    ask(app, "How do I add my own documents to the index?")
    app.feedback[0].set_value(0).run()
    cid = app.query_params["c"]
    rows = service().export_feedback(None)
    assert [(r["conversation_id"], r["score"]) for r in rows] == [(cid, -1)]
    app = AppTest.from_file(SCRIPT, default_timeout=RUN_TIMEOUT_S)
    app.query_params["c"] = cid
    app.run()
    assert app.feedback[0].value == 0, "a reopened conversation shows the stored thumbs"


def test_an_uploaded_file_is_ingested_and_counted(ui_env: Callable[..., dict[str, str]]) -> None:
    env = ui_env()
    app = start()
    before = _documents(app)
    _upload_and_index(app, "kettle.md", b"# Z9 kettle\n\nThe Z9 kettle is covered for three years.\n")
    assert _documents(app) == before + 1
    assert (Path(env["RAG_INDEX__DOCS_DIR"]) / "uploads" / "kettle.md").is_file()
    assert "uploads/kettle.md" in [d.path for d in service().documents()]


def _upload_and_index(app: AppTest, name: str, content: bytes) -> None:
    """Upload one file through the file_uploader, index it, and poll until the job reports."""
    app.file_uploader[0].upload(name, content, "text/markdown")
    app.run()
    next(b for b in app.button if b.label == "Index uploaded files").click().run()
    for _ in range(120):
        if any("Indexed 1 of 1 files" in s.label for s in app.status):
            return
        app.run()
    raise AssertionError(f"no 'Indexed 1 of 1 files' status; statuses: {[s.label for s in app.status]}")


def test_bad_uploads_are_listed_with_their_reasons(ui_env: Callable[..., dict[str, str]]) -> None:
    env = ui_env()
    app = start()
    before = _documents(app)
    app.file_uploader[0].upload("broken.pdf", b"not a pdf at all", "application/pdf")
    app.file_uploader[0].upload("tool.exe", b"MZ", "application/octet-stream")
    app.run()
    next(b for b in app.button if b.label == "Index uploaded files").click().run()
    assert any("tool.exe" in e.value and "cannot be indexed" in e.value for e in app.error)
    assert not (Path(env["RAG_INDEX__DOCS_DIR"]) / "uploads" / "tool.exe").exists()
    for _ in range(120):
        if any("failed" in s.label for s in app.status):
            break
        app.run()
    failed = next(s for s in app.status if "failed" in s.label)
    assert "broken.pdf" in markdown_text(failed)
    assert _documents(app) == before


def _documents(app: AppTest) -> int:
    return int(next(m for m in app.sidebar.metric if m.label == "Documents").value)


def test_a_deleted_document_leaves_the_list_and_the_index(ui_env: Callable[..., dict[str, str]]) -> None:
    env = ui_env()
    app = start()
    before = _documents(app)
    _upload_and_index(app, "kettle.md", b"# Z9 kettle\n\nThe Z9 kettle is covered for three years.\n")
    assert _documents(app) == before + 1
    target = "uploads/kettle.md"
    next(b for b in app.sidebar.button if b.key == f"delete-doc-{target}").click().run()
    assert [t.value for t in app.toast] == [f"Deleted `{target}`: it will not be cited again"]
    assert _documents(app) == before
    assert target not in [d.path for d in service().documents()]
    assert not (Path(env["RAG_INDEX__DOCS_DIR"]) / target).exists()


def test_past_conversations_reopen_and_delete(ui_env: Callable[..., dict[str, str]]) -> None:
    ui_env()
    app = start()
    ask(app, "How do I add my own documents to the index?")
    first = app.query_params["c"]
    next(b for b in app.sidebar.button if b.label == "New conversation").click().run()
    assert not app.chat_message
    next(b for b in app.sidebar.button if b.key == f"open-{first}").click().run()
    assert app.query_params["c"] == first
    assert app.chat_message[0].markdown[0].value == "How do I add my own documents to the index?"
    next(b for b in app.sidebar.button if b.key == f"delete-{first}").click().run()
    assert app.query_params["c"] != first, "deleting the open conversation starts a new one"
    assert not app.chat_message
    assert service().history(first) == []
    assert not [b for b in app.sidebar.button if b.key == f"open-{first}"]
