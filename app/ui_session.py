"""What the UI keeps per process (the service) and per browser session (the open conversation,
this session's retrieval options)."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

import streamlit as st

from app.service import ChatService
from chains.loop_thread import LoopThread
from config.settings import Settings

CONVERSATION_PARAM = "c"
"""Query parameter holding the open conversation, so a page reload reopens it."""


@dataclass(frozen=True)
class Resources:
    """The process-wide service and the loop answers stream on (see `app.ui_stream`)."""

    service: ChatService
    runner: LoopThread

    def close(self) -> None:
        self.runner.close()
        self.service.close()


@dataclass(frozen=True)
class SessionOptions:
    """Retrieval choices the sidebar makes for this browser session only."""

    top_k: int
    use_cache: bool


def _settings_key(settings: Settings) -> str:
    """Identifies a configuration (secrets included, hashed) without putting secrets in the key."""
    secrets = [settings.llm.api_key.get_secret_value()]
    for secret in (settings.api.api_key, settings.index.chroma_auth_token):
        secrets.append(secret.get_secret_value() if secret is not None else "")
    return hashlib.sha256("\0".join([settings.model_dump_json(), *secrets]).encode()).hexdigest()


@st.cache_resource(max_entries=1, on_release=Resources.close, show_spinner="Opening the index and the cache…")
def _open(key: str, _settings: Settings) -> Resources:
    """One per process; a different configuration (tests) releases and closes the previous one."""
    return Resources(ChatService.from_settings(_settings), LoopThread(name="ui-answers"))


def open_resources(settings: Settings) -> Resources:
    return _open(_settings_key(settings), settings)


def conversation_id() -> str:
    """The open conversation: from the URL (reload keeps it), else a new one put in the URL."""
    cid = st.query_params.get(CONVERSATION_PARAM)
    if not cid:
        cid = uuid.uuid4().hex
        st.query_params[CONVERSATION_PARAM] = cid
    return cid


def open_conversation(cid: str | None) -> None:
    """Switch to a stored conversation, or to a new one with None (used as a button callback)."""
    st.query_params[CONVERSATION_PARAM] = cid or uuid.uuid4().hex
