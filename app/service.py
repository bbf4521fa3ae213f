"""The one service layer the Streamlit UI and the HTTP API both call.

One `ChatService` per process holds one `RagAgent` (retrieval, cache, prompting and memory all
live there; nothing here re-implements them), the per-turn store that lets a chat page be redrawn
after a reload or a restart, and the documents library (uploads, ingest jobs, deletion).

    with ChatService.from_settings(load_settings()) as service:
        for piece in service.stream("How do I add documents?", "conv-1"):
            ...  # text pieces, then the TurnResult
        service.history("conv-1")  # [ChatTurn(question, answer, sources, cached, stopped, ...)]
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator, Sequence
from contextlib import aclosing, closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import httpx
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from app.documents import DocumentInfo, DocumentLibrary, IngestJob, SavedFile
from app.store import ChatStore, ChatTurn, ConversationInfo, TurnStoreError, store_url, write_rows
from chains import RagAgent, Source, Timings, TurnResult
from chains.questions import QuestionError, conversation_id_or_new
from config.settings import Settings

if TYPE_CHECKING:
    from chains.agent import SourcesCallback
    from chains.cache import CacheStats

log = logging.getLogger(__name__)

Piece = str | TurnResult
TINY_MODEL_MARKER = "tiny_model.json"
"""File the offline tiny model's folder holds (`serving.tiny_model.MARKER`; app does not import serving)."""
ENGINE_STATUS_TTL_S = 2.0
"""An engine probe is reused this long: a page redraw or a burst of /health calls costs one request."""


@dataclass(frozen=True)
class EngineStatus:
    model: str
    base_url: str
    healthy: bool
    detail: str
    """"ok", or why the engine cannot answer (answers are then retrieval-only)."""
    offline_model: bool
    """The offline tiny random-weights model is serving: answers are noise, sources are real."""


@dataclass(frozen=True)
class IndexStats:
    documents: int
    chunks: int
    index_version: str
    embed_model: str
    updated_at: str


@dataclass(frozen=True)
class PartHealth:
    ok: bool
    detail: str


class ChatService:
    """Build with `ChatService.from_settings(settings)`; share one per process; `close()` it."""

    def __init__(self, settings: Settings, agent: RagAgent, store: ChatStore, library: DocumentLibrary) -> None:
        self.settings = settings
        self._agent = agent
        self._store = store
        self._library = library
        self._engine: tuple[float, EngineStatus] | None = None
        self._engine_lock = threading.Lock()
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Settings) -> ChatService:
        """The agent, store and library the settings describe. A missing index is built from the
        documents folder first (an empty one is fine), so a fresh install can start with uploads."""
        from indexing import IndexNotFoundError
        from indexing.embeddings import load_embedding

        embed_model = load_embedding(settings.index.embed_model, settings.index.embed_batch_size)
        try:
            agent = RagAgent.from_settings(settings)
        except IndexNotFoundError:
            from indexing.pipeline import ingest

            docs = settings.index.docs_dir
            log.warning("no index yet: building one from %s", docs)
            (docs / settings.api.uploads_dir).mkdir(parents=True, exist_ok=True)
            ingest(settings.index, [docs], progress=False, embed_model=embed_model)
            agent = RagAgent.from_settings(settings)
        try:
            store = ChatStore(store_url(settings))
        except BaseException:
            agent.close()
            raise
        return cls(settings, agent, store, DocumentLibrary(settings, embed_model, store))

    def close(self) -> None:
        """Finish a running ingest, then close the agent and the store (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._library.close()
        self._agent.close()
        self._store.close()

    def __enter__(self) -> ChatService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- chat -------------------------------------------------------------------------------------

    def stream(
        self,
        question: str,
        conversation_id: str | None = None,
        *,
        use_cache: bool = True,
        top_k: int | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        turn_id: str | None = None,
        on_sources: SourcesCallback | None = None,
    ) -> Iterator[Piece]:
        """Text pieces, then the `TurnResult`; the turn is stored for `history()`.

        Closing the iterator early stops the answer: the model request is cancelled and the
        partial answer is stored marked `stopped`. `max_tokens`/`temperature` apply to this turn
        (capped at `llm.max_tokens`); a turn with either set bypasses the cache, whose answers
        were made with the configured values. `on_sources` gets the passages before the text.
        """
        recorder, options = self._prepare(
            question,
            conversation_id,
            use_cache=use_cache,
            top_k=top_k,
            max_tokens=max_tokens,
            temperature=temperature,
            turn_id=turn_id,
            on_sources=on_sources,
        )
        pieces = cast(Generator[Piece], self._agent.stream(question, recorder.conversation_id, **options))
        with closing(pieces):
            try:
                for piece in pieces:
                    yield recorder.add(piece)
            except GeneratorExit:
                recorder.stopped()
                raise

    async def astream(
        self,
        question: str,
        conversation_id: str | None = None,
        *,
        use_cache: bool = True,
        top_k: int | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        turn_id: str | None = None,
        on_sources: SourcesCallback | None = None,
    ) -> AsyncIterator[Piece]:
        """`stream` for an event loop: the agent runs on its own loop, so turns never block the caller's."""
        recorder, options = self._prepare(
            question,
            conversation_id,
            use_cache=use_cache,
            top_k=top_k,
            max_tokens=max_tokens,
            temperature=temperature,
            turn_id=turn_id,
            on_sources=on_sources,
        )
        pieces = cast(AsyncGenerator[Piece], self._agent.astream(question, recorder.conversation_id, **options))
        async with aclosing(pieces):
            try:
                async for piece in pieces:
                    if isinstance(piece, TurnResult):
                        yield await asyncio.to_thread(recorder.add, piece)
                    else:
                        yield recorder.add(piece)
            except (GeneratorExit, asyncio.CancelledError):
                recorder.stopped()  # synchronous: a cancelled task cannot await
                raise

    def _prepare(
        self,
        question: str,
        conversation_id: str | None,
        *,
        use_cache: bool,
        top_k: int | None,
        max_tokens: int | None,
        temperature: float | None,
        turn_id: str | None,
        on_sources: SourcesCallback | None,
    ) -> tuple[_TurnRecorder, dict[str, Any]]:
        """The turn's recorder and the agent's keyword arguments; bad options raise here, before any work."""
        if turn_id is not None:
            conversation_id_or_new(turn_id)  # same rules as conversation ids
        recorder = _TurnRecorder(
            self._store, conversation_id_or_new(conversation_id), turn_id or uuid.uuid4().hex, question, on_sources
        )
        model_settings = self._model_settings(max_tokens, temperature)
        options = {
            "use_cache": use_cache and not model_settings,
            "top_k": top_k,
            "model_settings": model_settings,
            "on_sources": recorder.sources_seen,
        }
        return recorder, options

    def _model_settings(self, max_tokens: int | None, temperature: float | None) -> dict[str, Any]:
        llm = self.settings.llm
        settings: dict[str, Any] = {}
        if max_tokens is not None:
            if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
                raise QuestionError(f"max_tokens must be a positive integer, not {max_tokens!r}")
            if min(max_tokens, llm.max_tokens) != llm.max_tokens:
                settings["max_completion_tokens"] = max_tokens
        if temperature is not None:
            if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 <= temperature <= 2:
                raise QuestionError(f"temperature must be between 0 and 2, not {temperature!r}")
            if temperature != llm.temperature:
                settings["temperature"] = float(temperature)
        return settings

    # -- status -----------------------------------------------------------------------------------

    def engine_status(self) -> EngineStatus:
        """Is the model server answering, and with which model (probed at most every 2 s)."""
        with self._engine_lock:
            now = time.monotonic()
            if self._engine is not None and now - self._engine[0] < ENGINE_STATUS_TTL_S:
                return self._engine[1]
            status = probe_engine(self.settings)
            self._engine = (time.monotonic(), status)
            return status

    def health(self) -> dict[str, PartHealth]:
        """Engine, index and cache, each ok or with what is wrong (for /health and the sidebar)."""
        engine = self.engine_status()
        parts = {"engine": PartHealth(engine.healthy, engine.detail)}
        try:
            stats = self.index_stats()
            parts["index"] = PartHealth(True, f"{stats.documents} documents, {stats.chunks} chunks")
        except Exception as exc:
            parts["index"] = PartHealth(False, str(exc))
        try:
            cache = self.cache_stats()
            parts["cache"] = PartHealth(True, "off" if cache is None else f"{cache.entries} entries")
        except Exception as exc:
            parts["cache"] = PartHealth(False, str(exc))
        return parts

    def index_stats(self) -> IndexStats:
        """What the index on disk holds now (re-read after every ingest or deletion)."""
        m = self._agent.retriever.manifest
        return IndexStats(m.documents, m.chunks, m.version, m.embed_model, m.updated_at)

    def cache_stats(self) -> CacheStats | None:
        return self._agent.cache_stats()

    def clear_cache(self) -> None:
        self._agent.clear_cache()

    # -- conversations and feedback ---------------------------------------------------------------

    def conversations(self) -> list[ConversationInfo]:
        """Past conversations, most recent first."""
        return self._store.conversations()

    def history(self, conversation_id: str) -> list[ChatTurn]:
        """The turns as stored: enough to redraw the chat (sources, badges, stopped marks, feedback)."""
        return self._store.turns(conversation_id_or_new(conversation_id))

    def add_history(self, conversation_id: str, history: Sequence[tuple[str, str]]) -> None:
        """Give a conversation earlier (role, text) turns that a client kept itself; roles other
        than "user" and "assistant" are ignored (the system prompt is the agent's own)."""
        messages: list[BaseMessage] = []
        for role, text in history:
            if role == "user":
                messages.append(HumanMessage(text, id=uuid.uuid4().hex))
            elif role == "assistant":
                messages.append(AIMessage(text, id=uuid.uuid4().hex))
        if messages:
            self._agent.add_history(conversation_id, messages)

    def delete_conversation(self, conversation_id: str) -> None:
        """Forget a conversation: its turns, its feedback and the agent's memory of it."""
        self._agent.delete_conversation(conversation_id)
        self._store.delete_conversation(conversation_id)

    def record_feedback(self, conversation_id: str, turn_id: str, score: int, comment: str | None = None) -> None:
        """Thumbs up (+1) or down (-1) on a stored turn; a second rating replaces the first."""
        self._store.record_feedback(conversation_id, turn_id, score, comment)

    def export_feedback(self, path: Path | str | None = None) -> list[dict[str, Any]]:
        """Every rating with its question, answer and cited files; also written to `path` (.csv or .jsonl)."""
        rows = self._store.feedback()
        if path is not None:
            write_rows(Path(path), rows)
        return rows

    # -- documents --------------------------------------------------------------------------------

    def save_uploads(self, files: Sequence[tuple[str, bytes]]) -> list[SavedFile]:
        """Save uploaded files into the documents folder (sanitised names, size limits); ingest them
        with `start_ingest([...])`."""
        return self._library.save_uploads(files)

    def start_ingest(self, paths: Sequence[Path | str] | None = None) -> str:
        """Queue a background ingest (default: the whole documents folder); returns the job id."""
        return self._library.start_ingest([Path(p) for p in paths] if paths else None)

    def job(self, job_id: str) -> IngestJob:
        return self._library.job(job_id)

    def documents(self) -> list[DocumentInfo]:
        return self._library.documents()

    def delete_document(self, path: str) -> None:
        """Delete a document's file and its chunks; it is never retrieved or served from cache again."""
        self._library.delete_document(path)

    @property
    def uploads_dir(self) -> Path:
        return self._library.uploads_dir


def probe_engine(settings: Settings) -> EngineStatus:
    """Is the model server answering, and with which model (one request, `api.engine_check_s` at most)."""
    llm = settings.llm
    base_url, model = str(llm.base_url), str(llm.model)
    local = Path(settings.serving.model)
    offline = (local / TINY_MODEL_MARKER).is_file()
    try:
        response = httpx.get(
            f"{base_url.rstrip('/')}/models",
            headers={"Authorization": f"Bearer {llm.api_key.get_secret_value()}"},
            timeout=settings.api.engine_check_s,
        )
        response.raise_for_status()
        cards = response.json().get("data", [])
    except (httpx.HTTPError, ValueError) as exc:
        detail = f"cannot reach the model server at {base_url} ({type(exc).__name__}); answers are retrieval-only"
        return EngineStatus(model, base_url, False, detail, offline)
    card = next((c for c in cards if isinstance(c, dict) and c.get("id") == model), None)
    if card is None:
        served = ", ".join(str(c.get("id")) for c in cards if isinstance(c, dict)) or "nothing"
        return EngineStatus(model, base_url, False, f"the server serves {served}, not {model!r}", offline)
    root = card.get("root")
    if isinstance(root, str) and root:
        offline = (Path(root) / TINY_MODEL_MARKER).is_file()
    return EngineStatus(model, base_url, True, "ok", offline)


class _TurnRecorder:
    """Collects one streamed turn and stores it: complete when the result arrives, else as stopped."""

    def __init__(
        self,
        store: ChatStore,
        conversation_id: str,
        turn_id: str,
        question: str,
        on_sources: SourcesCallback | None,
    ) -> None:
        self._store = store
        self.conversation_id = conversation_id
        self.turn_id = turn_id
        self._question = question.strip() if isinstance(question, str) else ""
        self._on_sources = on_sources
        self._sources: list[Source] = []
        self._pieces: list[str] = []
        self._started = time.perf_counter()
        self._first_at: float | None = None
        self._done = False

    def sources_seen(self, sources: list[Source]) -> None:
        self._sources = sources
        if self._on_sources is not None:
            self._on_sources(sources)

    def add(self, piece: Piece) -> Piece:
        """The piece to pass on: the result gains a notice when the turn store could not save it
        (the answer was generated and the agent's memory holds it: it is served, not failed)."""
        if isinstance(piece, TurnResult):
            self._done = True
            try:
                self._store.record_turn(self.conversation_id, _turn_from_result(self.turn_id, piece))
            except TurnStoreError as exc:
                log.warning("conversation %s: %s", self.conversation_id, exc)
                notice = f"{exc}; it will not show when the conversation is reopened"
                return dataclasses.replace(piece, notices=(*piece.notices, notice))
            return piece
        if self._first_at is None:
            self._first_at = time.perf_counter()
        self._pieces.append(piece)
        return piece

    def stopped(self) -> None:
        if self._done:
            return
        self._done = True
        now = time.perf_counter()
        ttft = None if self._first_at is None else self._first_at - self._started
        turn = ChatTurn(
            turn_id=self.turn_id,
            question=self._question,
            answer="".join(self._pieces),
            sources=tuple(self._sources),
            cached=False,
            retrieval_only=False,
            stopped=True,
            timings=Timings(ttft_s=ttft, total_s=now - self._started),
            notices=("stopped by the user",),
            created_at=time.time(),
        )
        try:
            self._store.record_turn(self.conversation_id, turn)
        except Exception:  # the stop itself must not fail because the store did
            log.exception("could not store the stopped turn %s", self.turn_id)


def _turn_from_result(turn_id: str, result: TurnResult) -> ChatTurn:
    return ChatTurn(
        turn_id=turn_id,
        question=result.question,
        answer=result.answer,
        sources=result.sources,
        cached=result.cached,
        retrieval_only=result.retrieval_only,
        stopped=result.interrupted,  # cut short by the model server: kept, marked like a stopped answer
        timings=result.timings,
        notices=result.notices,
        created_at=time.time(),
    )
