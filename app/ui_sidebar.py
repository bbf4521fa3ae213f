"""Sidebar (engine, index, cache, session options, conversations, documents) and the banners
above the chat (engine down, offline model)."""

from __future__ import annotations

import time

import streamlit as st

from app.service import ChatService, EngineStatus
from app.ui_documents import render_documents
from app.ui_format import duration
from app.ui_session import SessionOptions, open_conversation
from config.settings import Settings

ENGINE_POLL_S = 5.0
"""How often the page re-checks the model server, so the engine-down banner clears by itself."""


def render_sidebar(service: ChatService, settings: Settings, cid: str, status: EngineStatus) -> SessionOptions:
    with st.sidebar:
        st.title("ragchat", anchor=False)
        _engine(status, settings)
        _index(service)
        _cache(service)
        options = _options(settings, cache_available=service.cache_stats() is not None)
        _conversations(service, cid)
        render_documents(service)
    return options


def render_banners(service: ChatService, status: EngineStatus) -> None:
    if not status.healthy:
        st.warning(
            f"**The model server is not answering**: {status.detail}. Answers list the retrieved passages "
            "only, marked *retrieval only*. This page notices by itself when the server is back; nothing "
            "needs restarting.",
            icon=":material/cloud_off:",
        )
    if status.offline_model:
        st.info(
            f"**Offline demo model in use** ({status.model}): a tiny random-weights model built locally, so the "
            "answers are noise while the retrieved, cited sources are real. For real answers serve a real model, "
            "e.g. `RAG_SERVING__MODEL=Qwen/Qwen2.5-0.5B-Instruct make serve PROFILE=cpu` (README: Serving).",
            icon=":material/science:",
        )
    _watch_engine(service, status.healthy)


@st.fragment(run_every=ENGINE_POLL_S)
def _watch_engine(service: ChatService, healthy: bool) -> None:
    """Redraw the whole page when the engine goes down or comes back (fragment reruns never
    interrupt an answer that is streaming; they wait for it)."""
    if service.engine_status().healthy != healthy:
        st.rerun()


def _engine(status: EngineStatus, settings: Settings) -> None:
    icon = ":material/check_circle:" if status.healthy else ":material/error:"
    st.subheader("Engine", anchor=False)
    st.markdown(f"{icon} **{status.model}** — {'healthy' if status.healthy else 'down'}")
    st.caption(f"{status.base_url} · profile `{settings.profile}`")


def _index(service: ChatService) -> None:
    stats = service.index_stats()
    st.subheader("Index", anchor=False)
    docs, chunks = st.columns(2)
    docs.metric("Documents", stats.documents)
    chunks.metric("Chunks", stats.chunks)
    st.caption(f"version `{stats.index_version[:12] if stats.index_version else '-'}` · {stats.embed_model}")


def _cache(service: ChatService) -> None:
    stats = service.cache_stats()
    st.subheader("Semantic cache", anchor=False)
    if stats is None:
        st.caption("off (cache.enabled is false)")
        return
    hits, entries = st.columns(2)
    hits.metric("Hit rate", f"{stats.hit_rate:.0%}", help=f"{stats.hits} hits, {stats.misses} misses")
    entries.metric("Entries", stats.entries)
    st.caption(f"time saved {duration(stats.time_saved_s)}")
    if st.button("Clear cache", icon=":material/delete_sweep:"):
        service.clear_cache()
        st.toast("Semantic cache cleared")
        st.rerun()


def _options(settings: Settings, *, cache_available: bool) -> SessionOptions:
    st.subheader("This session", anchor=False)
    top_k = st.slider("Passages retrieved (top-k)", 1, 20, min(settings.index.top_k, 20), key="top_k")
    use_cache = st.toggle(
        "Use the semantic cache",
        value=cache_available,
        disabled=not cache_available,
        key="use_cache",
        help="Off: every question goes to the model, and its answer is not stored in the cache",
    )
    return SessionOptions(top_k=top_k, use_cache=use_cache and cache_available)


def _conversations(service: ChatService, cid: str) -> None:
    st.subheader("Conversations", anchor=False)
    st.button("New conversation", icon=":material/add_comment:", on_click=open_conversation, args=(None,))
    for info in service.conversations():
        title = info.title if len(info.title) <= 40 else info.title[:39] + "…"
        updated = time.strftime("%Y-%m-%d %H:%M", time.localtime(info.updated_at))
        label = f"**{title}**" if info.id == cid else title
        left, right = st.columns([5, 1], vertical_alignment="center")
        left.button(
            label,
            key=f"open-{info.id}",
            on_click=open_conversation,
            args=(info.id,),
            help=f"{info.turns} turns · last {updated}",
            type="tertiary",
        )
        right.button(
            "",
            key=f"delete-{info.id}",
            icon=":material/delete:",
            on_click=_delete_conversation,
            args=(service, info.id, cid),
            help="Delete this conversation",
            type="tertiary",
        )


def _delete_conversation(service: ChatService, target: str, current: str) -> None:
    service.delete_conversation(target)
    if target == current:
        open_conversation(None)
