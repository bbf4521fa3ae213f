"""The Streamlit chat UI: `make app` (`streamlit run app/ui.py`).

Settings are read here, once per script run, from the profile and `RAG_*` variables; the
service (one agent per process, shared by every browser session) is built on first use and
kept in `st.cache_resource`. The page itself only lays things out: retrieval, caching and
prompting all happen behind `app.service.ChatService`.
"""

from __future__ import annotations

import streamlit as st

from app.ui_chat import render_chat
from app.ui_session import conversation_id, open_resources
from app.ui_sidebar import render_banners, render_sidebar
from config import load_settings


def main() -> None:
    st.set_page_config(page_title="ragchat", page_icon=":material/forum:", layout="wide")
    settings = load_settings()
    resources = open_resources(settings)
    cid = conversation_id()
    status = resources.service.engine_status()
    options = render_sidebar(resources.service, settings, cid, status)
    render_banners(resources.service, status)
    render_chat(resources, cid, options)


main()
