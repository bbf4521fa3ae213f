"""The conversation: stored turns redrawn from the service, a new answer streamed with Stop."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import streamlit as st

from app.service import ChatService, ChatTurn
from app.ui_format import cache_similarity, source_title, timing_line
from app.ui_session import Resources, SessionOptions
from app.ui_stream import AnswerStream
from chains import QuestionError, Source

STOP_KEY = "stop-answer"
ANSWER_KEY = "answer-stream"
"""Session key of the answer being streamed, so the next run can wait for it to be stored."""
STOPPING_WAIT_S = 10.0


def render_chat(resources: Resources, cid: str, options: SessionOptions) -> None:
    service = resources.service
    streaming = st.session_state.get(ANSWER_KEY)
    # A Stop click starts this run while the stopped run may still be storing its partial answer in
    # its own thread; wait for it so the history below includes it.
    stopping = streaming is not None and not streaming.wait_closed(STOPPING_WAIT_S)
    try:
        turns = service.history(cid)
    except QuestionError as exc:  # a hand-edited ?c= in the URL
        st.error(f"Cannot open this conversation: {exc}")
        return
    if not turns:
        st.markdown("### Ask about your documents\nAnswers cite the passages they rest on; open a source to read it.")
    for turn in turns:
        render_turn(service, cid, turn)
    if streaming is not None and stopping:
        # Still unwinding (a loaded machine): say so, and redraw once it is stored, rather than
        # leave the page without the stopped answer until the next click.
        st.caption("Stopping the last answer…")
        streaming.wait_closed(STOPPING_WAIT_S)
        st.rerun()
    question = st.chat_input("Ask about your documents")
    if question:
        ask(resources, cid, question, options)


def render_turn(service: ChatService, cid: str, turn: ChatTurn) -> None:
    """One stored turn: question, answer, badges, sources, timings and feedback."""
    with st.chat_message("user"):
        st.markdown(turn.question)
    with st.chat_message("assistant"):
        st.markdown(turn.answer or "_(stopped before the first token)_")
        _badges(turn)
        _sources(turn.sources)
        st.caption(timing_line(turn.timings, turn.answer))
        st.feedback(
            "thumbs",
            key=f"feedback-{cid}-{turn.turn_id}",
            default=_feedback_index(turn.feedback),
            on_change=_store_feedback,
            args=(service, cid, turn.turn_id),
        )


def ask(resources: Resources, cid: str, question: str, options: SessionOptions) -> None:
    """Stream the answer; a Stop click (or any other rerun) cancels it on the model server.

    The service stores the turn either way (a partial answer marked stopped), and the rerun
    that follows redraws it from storage with its sources and feedback."""
    with st.chat_message("user"):
        st.markdown(question)
    with st.chat_message("assistant"):
        st.button("Stop", key=STOP_KEY, icon=":material/stop_circle:", help="Stop this answer; keep what came so far")
        pieces = resources.service.astream(question, cid, use_cache=options.use_cache, top_k=options.top_k)
        stream = AnswerStream(pieces, resources.runner, checkpoint=lambda: st.session_state.get(STOP_KEY))
        st.session_state[ANSWER_KEY] = stream
        try:
            st.write_stream(_text(stream))
        except QuestionError as exc:
            st.error(str(exc))
            return
        finally:
            stream.close()
    st.rerun()


def _text(pieces: Iterable[object]) -> Iterator[str]:
    """The answer text; the closing result object is not shown (the redraw shows the stored turn)."""
    for piece in pieces:
        if isinstance(piece, str):
            yield piece


def _badges(turn: ChatTurn) -> None:
    badges = []
    if turn.cached:
        similarity = cache_similarity(turn.notices)
        similarity_text = f" · similarity {similarity:.2f}" if similarity is not None else ""
        badges.append((f"from cache{similarity_text}", ":material/bolt:", "green"))
    if turn.retrieval_only:
        badges.append(("retrieval only: the model server did not answer", ":material/cloud_off:", "orange"))
    if turn.stopped:
        badges.append(("stopped", ":material/stop_circle:", "gray"))
    if badges:  # Streamlit's badge markdown keeps them on one line
        st.markdown(" ".join(f":{color}-badge[{icon} {label}]" for label, icon, color in badges))


def _sources(sources: Iterable[Source]) -> None:
    for source in sources:
        with st.expander(source_title(source), icon=":material/description:"):
            if source.title:
                st.markdown(f"**{source.title}**")
            st.text(source.snippet)


def _feedback_index(score: int | None) -> int | None:
    """Stored +1/-1 as st.feedback's thumbs index (1 up, 0 down)."""
    return None if score is None else int(score > 0)


def _store_feedback(service: ChatService, cid: str, turn_id: str) -> None:
    value = st.session_state.get(f"feedback-{cid}-{turn_id}")
    if value is not None:
        service.record_feedback(cid, turn_id, 1 if value == 1 else -1)
