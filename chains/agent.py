"""`RagAgent`: answers questions from the index, streaming, with citations, memory and a cache.

A turn: validate the question; rewrite a follow-up into a standalone question (skipped without
history or when the question names its subject; a rewrite that fails the checks in
`chains.followups` is not used); look it up in the semantic cache; retrieve passages (for a
rewritten follow-up, also for the question as asked, fused); run the LangChain agent with those
passages already in its first prompt; stream its text; store the turn in the conversation and the
answer in the cache. When the model server cannot answer, the turn still returns, within the
configured timeout, the top passages with citations, marked `retrieval_only`; when it fails after
its answer started, the turn ends with the text that arrived, marked `interrupted`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import statistics
import time
import uuid
import weakref
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from langchain.agents import create_agent
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.runnables import RunnableConfig

from chains.condense import condense_question, has_turns
from chains.context import PassageRegistry, TurnContext
from chains.conversations import (
    Conversations,
    close_checkpointer,
    open_checkpointer,
    open_postgres_checkpointer,
    store_errors,
    thread_config,
)
from chains.followups import fuse, needs_history, rejection
from chains.leaks import PromptLeakFilter
from chains.llm import endpoint, idle_limited, make_chat_model, served_chars_per_token, unavailable_reason, within
from chains.loop_thread import LoopThread
from chains.middleware import (
    ContextPrefetchMiddleware,
    SearchBudgetMiddleware,
    SummaryMemoryMiddleware,
    TimingMiddleware,
)
from chains.prompts import PROMPT_VERSION, SYSTEM_PROMPT, retrieval_only_answer
from chains.questions import QuestionError, conversation_id_or_new, prepare_question
from chains.results import Source, TurnResult
from chains.tokens import CHARS_PER_TOKEN
from chains.tools import make_search_tool
from chains.trace import LLMCallTracer, TurnTrace
from config.settings import Settings

if TYPE_CHECKING:
    from chains.cache import CacheHit, CacheScope, CacheStats, Lookup, SemanticCache
    from indexing.retrieval import HybridRetriever, Passage

logger = logging.getLogger(__name__)

Piece = str | TurnResult
SourcesCallback = Callable[[list[Source]], None]
MAX_TOP_K = 100
"""Most passages one call may ask for (the bound of `index.top_k`)."""
SCALE_RETRY_S = 60.0
"""After the served model could not tell its tokens per character, ask again this much later."""
SCALE_WAIT_S = 0.5
"""Longest a turn waits for that answer (a healthy vLLM gives it in milliseconds)."""


class RagAgent:
    """Chat with the indexed documents. Build with `RagAgent.from_settings(settings)`.

    Every method takes a question and an optional conversation id (None starts a new
    conversation; the id comes back in the result). `stream`/`astream` yield text pieces and
    end with the `TurnResult`. Safe to share between threads and event loops; `close()` it (or
    use it as a context manager) when done.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        retriever: HybridRetriever,
        chat_model: BaseChatModel,
        cache: SemanticCache | None,
    ) -> None:
        self._settings = settings
        self._base_url, self._model_name = endpoint(settings.llm)
        self._retriever = retriever
        self._model = chat_model
        self._cache = cache
        # A lookup returns its question vector; with the same embedding model, retrieval reuses it.
        self._share_vector = cache is not None and cache.embed_model_name == retriever.settings.embed_model
        self._tools = [make_search_tool(retriever, settings.index.top_k)]
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._uncached_s: deque[float] = deque(maxlen=100)
        self._budget_scale: float | None = None  # set by the first turn that could measure it
        self._scale_failed_at = -math.inf
        self._scale_task: asyncio.Future[float | None] | None = None
        self._owned: list[object] = []  # parts from_settings built, closed with the agent
        self._owned_clients: list[Any] = []  # async HTTP clients of those parts, closed on the loop
        self._runner = LoopThread(name="rag-agent")
        try:
            url = settings.state.postgres_url if settings.state.mode == "shared" else None
            self._saver = self._runner.run(
                open_postgres_checkpointer(url.get_secret_value())
                if url
                else open_checkpointer(settings.chains.conversations_db)
            )
            self._graph = self._build_graph()
        except BaseException:
            self._runner.close()
            raise
        self._conversations = Conversations(self._graph)

    def _build_graph(self) -> Any:
        """The LangChain agent: one search tool, middleware outermost first, SQLite-checkpointed."""
        chains = self._settings.chains
        return create_agent(
            self._model,
            self._tools,
            system_prompt=SYSTEM_PROMPT,
            middleware=[
                TimingMiddleware(),
                SummaryMemoryMiddleware(
                    self._model,
                    history_token_budget=chains.history_token_budget,
                    keep_last_messages=chains.keep_last_messages,
                ),
                SearchBudgetMiddleware(chains.max_model_calls),
                ContextPrefetchMiddleware(),
            ],
            context_schema=TurnContext,
            checkpointer=self._saver,
            name="rag_agent",
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        retriever: HybridRetriever | None = None,
        chat_model: BaseChatModel | None = None,
        cache: SemanticCache | None = None,
    ) -> RagAgent:
        """The agent the settings describe; pass parts to replace the ones it would build.

        When building fails, the parts built so far are closed before the error propagates.
        """
        owned: list[object] = []
        clients: list[Any] = []
        try:
            return cls._build(
                settings, retriever=retriever, chat_model=chat_model, cache=cache, owned=owned, clients=clients
            )
        except BaseException:
            _release(owned, clients)
            raise

    @classmethod
    def _build(
        cls,
        settings: Settings,
        *,
        retriever: HybridRetriever | None,
        chat_model: BaseChatModel | None,
        cache: SemanticCache | None,
        owned: list[object],
        clients: list[Any],
    ) -> RagAgent:
        """`from_settings`'s work; what it builds goes into `owned`/`clients` as soon as it exists."""
        if retriever is None:
            from indexing.retrieval import open_retriever

            retriever = open_retriever(settings.index)
            owned.append(retriever)
        if chat_model is None:
            chat_model = make_chat_model(settings.llm)
            clients.append(chat_model.http_async_client)
        if cache is None and settings.cache.enabled:
            from chains.cache import SemanticCache, model_verifier

            cache = SemanticCache.from_settings(
                settings.cache,
                settings.index.embed_model,
                settings.index.embed_batch_size,
                verifier=model_verifier(chat_model) if settings.cache.verify_with_model else None,
                embed_backend=settings.index.embed_backend,
            )
            owned.append(cache)
        agent = cls(settings, retriever=retriever, chat_model=chat_model, cache=cache)
        agent._owned, agent._owned_clients = owned, clients
        return agent

    # Public API: every method runs the one async pipeline, `_turn`, on the agent's loop.

    # Per-call options: `top_k` passages retrieved (default `index.top_k`); `model_settings`,
    # request fields for the answer's model calls (e.g. `max_completion_tokens`); for streams,
    # `on_sources`, called on the agent's loop with the passages the answer will rest on, before
    # its first text (so a UI can show them early).

    def invoke(
        self,
        question: str,
        conversation_id: str | None = None,
        *,
        use_cache: bool = True,
        top_k: int | None = None,
        model_settings: Mapping[str, Any] | None = None,
    ) -> TurnResult:
        return self._runner.run(
            self._result(question, conversation_id, use_cache, _Options(top_k, dict(model_settings or {})))
        )

    async def ainvoke(
        self,
        question: str,
        conversation_id: str | None = None,
        *,
        use_cache: bool = True,
        top_k: int | None = None,
        model_settings: Mapping[str, Any] | None = None,
    ) -> TurnResult:
        return await self._runner.arun(
            self._result(question, conversation_id, use_cache, _Options(top_k, dict(model_settings or {})))
        )

    def stream(
        self,
        question: str,
        conversation_id: str | None = None,
        *,
        use_cache: bool = True,
        top_k: int | None = None,
        model_settings: Mapping[str, Any] | None = None,
        on_sources: SourcesCallback | None = None,
    ) -> Iterator[Piece]:
        """Text pieces as they are generated, then the `TurnResult`. Read to the end: the turn is
        stored in the conversation (and the cache) before the result is yielded."""
        options = _Options(top_k, dict(model_settings or {}), on_sources)
        return self._runner.iterate(self._turn(question, conversation_id, use_cache, options))

    def astream(
        self,
        question: str,
        conversation_id: str | None = None,
        *,
        use_cache: bool = True,
        top_k: int | None = None,
        model_settings: Mapping[str, Any] | None = None,
        on_sources: SourcesCallback | None = None,
    ) -> AsyncIterator[Piece]:
        """Text pieces as they are generated, then the `TurnResult`."""
        options = _Options(top_k, dict(model_settings or {}), on_sources)
        return self._runner.aiterate(self._turn(question, conversation_id, use_cache, options))

    async def abatch(
        self,
        questions: Sequence[str],
        conversation_ids: Sequence[str | None] | None = None,
        *,
        use_cache: bool = True,
        return_exceptions: bool = False,
    ) -> list[TurnResult | BaseException]:
        """Answer many questions concurrently (the model server batches them); results keep the
        order of `questions`. Turns of the same conversation run one after another."""
        ids = list(conversation_ids) if conversation_ids is not None else [None] * len(questions)
        if len(ids) != len(questions):
            raise ValueError(f"{len(questions)} questions but {len(ids)} conversation ids")
        turns = [self._result(q, cid, use_cache, _Options()) for q, cid in zip(questions, ids, strict=True)]

        async def gather() -> list[TurnResult | BaseException]:
            return await asyncio.gather(*turns, return_exceptions=return_exceptions)

        return await self._runner.arun(gather())

    def history(self, conversation_id: str) -> list[BaseMessage]:
        """The stored messages of a conversation (a summary first once it has been compressed)."""
        return self._runner.run(self._conversations.messages(conversation_id_or_new(conversation_id)))

    def add_history(self, conversation_id: str, messages: Sequence[BaseMessage]) -> None:
        """Append earlier turns to a conversation, for callers that keep the history themselves
        (OpenAI-style clients send it with every request)."""
        self._runner.run(self._conversations.record(conversation_id_or_new(conversation_id), *messages))

    def delete_conversation(self, conversation_id: str) -> None:
        self._runner.run(self._conversations.delete(conversation_id_or_new(conversation_id)))

    def cache_stats(self) -> CacheStats | None:
        """Hits, misses, hit rate, time saved and entries; None when the cache is off."""
        if self._cache is None:
            return None
        return self._cache.stats()

    def clear_cache(self) -> None:
        if self._cache is not None:
            self._cache.clear()

    @property
    def retriever(self) -> HybridRetriever:
        return self._retriever

    def close(self) -> None:
        """Close the conversations database and stop the agent's loop (idempotent)."""
        if self._runner.closed:
            return
        self._runner.run(self._aclose())
        self._runner.close()
        _close_parts(self._owned)

    async def _aclose(self) -> None:
        if self._scale_task is not None:
            self._scale_task.cancel()
        for client in self._owned_clients:
            await client.aclose()
        await close_checkpointer(self._saver)

    def __enter__(self) -> RagAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # The pipeline.

    async def _result(
        self, question: str, conversation_id: str | None, use_cache: bool, options: _Options
    ) -> TurnResult:
        async for piece in self._turn(question, conversation_id, use_cache, options):
            if isinstance(piece, TurnResult):
                return piece
        raise AssertionError("a turn always ends with its result")

    async def _turn(
        self, question: str, conversation_id: str | None, use_cache: bool, options: _Options
    ) -> AsyncIterator[Piece]:
        text, notices = prepare_question(question, self._settings.chains.max_question_tokens)
        turn = _Turn(conversation_id_or_new(conversation_id), HumanMessage(text, id=uuid.uuid4().hex), text, notices)
        use_cache = use_cache and self._cache is not None
        async with self._lock(turn.conversation_id):
            history = await self._conversations.messages(turn.conversation_id)
            failure = await self._condense(turn, history) if has_turns(history) else None
            scope = self._scope(options.top_k)
            lookup = None
            if use_cache:
                lookup = await self._lookup(turn, scope)
                if lookup.hit is not None:
                    options.announce([Source.from_dict(s) for s in lookup.hit.answer.sources])
                    async for piece in self._answer_from_cache(turn, lookup.hit):
                        yield piece
                    return
            with turn.trace.stage("retrieval"):
                passages = await self._retrieve(turn, options.top_k, self._shared(lookup))
            budget = self._settings.chains.context_token_budget
            registry = PassageRegistry(int(budget * await self._token_scale(passages)))
            prompt_context = registry.add(passages)
            options.announce(registry.sources)
            context = TurnContext(
                str(turn.asked.id), prompt_context, registry, turn.trace, model_settings=options.model_settings
            )
            pieces: list[str] = []
            leaks = PromptLeakFilter(SYSTEM_PROMPT)
            if failure is None:
                try:
                    # Closed at once when the caller stops reading: the model request is then cancelled
                    # on the server instead of waiting for the garbage collector to close the stream.
                    async with aclosing(self._agent_text(turn.conversation_id, turn.asked, context)) as streamed:
                        async for piece in streamed:
                            shown = leaks.feed(piece)
                            if shown:
                                pieces.append(shown)
                                yield shown
                except Exception as exc:
                    failure = unavailable_reason(exc, self._base_url)
                    if failure is None:
                        raise
                if tail := leaks.flush():
                    pieces.append(tail)
                    yield tail
            if failure is not None and pieces:
                yield await self._interrupted(turn, "".join(pieces), registry, failure)
                return
            if failure is not None:
                async for piece in self._answer_from_passages(turn, registry, failure):
                    yield piece
                return
            answer = "".join(pieces) or leaks.redact(await self._last_answer(turn.conversation_id))
            if leaks.redacted:
                turn.notices.append("part of the answer repeated the assistant's instructions and was redacted")
            if not answer:
                turn.notices.append("the model returned an empty answer")
            result = turn.result(answer, registry.cited(answer))
            self._uncached_s.append(result.timings.total_s)
            if use_cache and answer:
                await self._store(turn.standalone, scope, result, None if lookup is None else lookup.vector)
            yield result

    async def _condense(self, turn: _Turn, history: list[BaseMessage]) -> str | None:
        """Rewrite the follow-up into `turn.standalone` when it needs the history and the rewrite
        passes the checks (the notices say which question was used); on model failure keep the
        question and return why."""
        question = turn.asked.text
        if not needs_history(question):
            turn.notices.append("not rewritten: the question names its subject")
            return None
        with turn.trace.stage("condense"):
            try:
                rewrite = await within(
                    condense_question(
                        self._model,
                        self._tools,
                        history,
                        question,
                        max_question_tokens=self._settings.chains.max_question_tokens,
                        config={"callbacks": [LLMCallTracer(turn.trace)]},
                    ),
                    self._settings.llm.request_timeout_s,
                )
            except Exception as exc:
                failure = unavailable_reason(exc, self._base_url)
                if failure is None:
                    raise
                turn.notices.append(f"follow-up not rewritten: {failure}")
                return failure
        reason = rejection(question, rewrite)
        if reason is not None:
            turn.notices.append(f"rewrite not used, {reason}: {rewrite[:200]!r}")
        elif rewrite == question:
            turn.notices.append("follow-up kept as asked: the model's rewrite is the question itself")
        else:
            turn.standalone = rewrite
            turn.notices.append(f"follow-up rewritten as {rewrite!r}; retrieval used it and the question as asked")
        return None

    async def _retrieve(self, turn: _Turn, top_k: int | None, vector: list[float] | None) -> list[Passage]:
        """Passages for the standalone question; for a rewritten follow-up, fused with those of the
        question as asked, so a wrong rewrite cannot push out what the question alone finds."""
        rewritten = self._retriever.aretrieve(turn.standalone, top_k, query_embedding=vector)
        if turn.standalone == turn.asked.text:
            return await rewritten
        both = await asyncio.gather(rewritten, self._retriever.aretrieve(turn.asked.text, top_k))
        return fuse(*both, top_k or self._retriever.settings.top_k, self._retriever.settings.rrf_k)

    async def _agent_text(self, cid: str, asked: HumanMessage, context: TurnContext) -> AsyncGenerator[str]:
        """The agent's answer text as the model streams it (tool-call messages carry none)."""
        config: RunnableConfig = {**thread_config(cid), "callbacks": [LLMCallTracer(context.trace)]}
        events = self._graph.astream(
            {"messages": [asked]}, config, context=context, stream_mode="messages", durability="exit"
        )
        limited = idle_limited(events, self._settings.llm.request_timeout_s)
        async with store_errors(cid), aclosing(limited):  # the graph reads and writes the conversation
            async for event in limited:
                chunk, metadata = cast(tuple[BaseMessage, dict[str, Any]], event)
                if metadata.get("langgraph_node") == "model" and isinstance(chunk, AIMessageChunk) and chunk.text:
                    context.trace.mark_text()
                    yield chunk.text

    async def _last_answer(self, cid: str) -> str:
        """The final AI message of the run, for answers that were not streamed as text."""
        for message in reversed(await self._conversations.messages(cid)):
            if isinstance(message, AIMessage):
                return message.text
        return ""

    async def _answer_from_cache(self, turn: _Turn, hit: CacheHit) -> AsyncIterator[Piece]:
        cached = hit.answer
        turn.trace.mark_text()
        yield cached.answer
        await self._conversations.record(
            turn.conversation_id, turn.asked, AIMessage(cached.answer, id=uuid.uuid4().hex)
        )
        turn.notices.append(f"answered from the semantic cache (similarity {hit.similarity:.3f})")
        result = turn.result(cached.answer, [Source.from_dict(s) for s in cached.sources], cached=True)
        if self._uncached_s and self._cache is not None:
            saved = statistics.median(self._uncached_s) - result.timings.total_s
            if saved > 0:
                self._cache.record_saved(saved)
        yield result

    async def _answer_from_passages(self, turn: _Turn, registry: PassageRegistry, failure: str) -> AsyncIterator[Piece]:
        """The retrieval-only answer when the model server cannot answer (before any text of its own)."""
        logger.warning("answering from retrieval only: %s", failure)
        answer = retrieval_only_answer(failure, registry.sources)
        turn.trace.mark_text()
        yield answer
        await self._conversations.record(turn.conversation_id, turn.asked, AIMessage(answer, id=uuid.uuid4().hex))
        turn.notices.append(f"answered from retrieval only: {failure}")
        yield turn.result(answer, registry.sources, retrieval_only=True, error=failure)

    async def _token_scale(self, passages: list[Passage]) -> float:
        """How much of the context budget (in estimated tokens) fits the served model's window: 1.0
        when its tokenizer packs at least the estimate's characters per token (or cannot be asked),
        less for a denser one (the offline tiny model: about 2.3). Measured once, on real passages;
        a turn waits at most SCALE_WAIT_S for the answer (a silent server must not hold it up)."""
        if self._budget_scale is not None:
            return self._budget_scale
        task = self._scale_task  # shared by the turns that run meanwhile
        if task is None:
            sample = "\n".join(p.text for p in passages)[:4000]
            if not sample or time.monotonic() - self._scale_failed_at < SCALE_RETRY_S:
                return 1.0
            timeout = min(2.0, self._settings.llm.request_timeout_s)
            task = self._scale_task = asyncio.ensure_future(
                served_chars_per_token(self._base_url, self._model_name, sample, timeout)
            )
        done, _ = await asyncio.wait({task}, timeout=SCALE_WAIT_S)
        if not done:
            return 1.0  # still asking: a later turn uses the answer
        if self._scale_task is task:
            self._scale_task = None
        ratio = task.result()
        if ratio is None:
            self._scale_failed_at = time.monotonic()  # asked again after SCALE_RETRY_S
            return 1.0
        self._budget_scale = min(1.0, ratio / CHARS_PER_TOKEN)
        if self._budget_scale < 1.0:
            logger.info(
                "the served model's tokenizer counts %.1f characters per token: passage budgets scaled by %.2f",
                ratio,
                self._budget_scale,
            )
        return self._budget_scale

    async def _interrupted(self, turn: _Turn, partial: str, registry: PassageRegistry, failure: str) -> TurnResult:
        """The result of an answer the model server stopped sending midway: the text that arrived,
        kept in the conversation, marked `interrupted` (never cached). Appending a passage list
        would pass a broken answer off as a finished one to a client that watched it stream."""
        logger.warning("the answer was cut off: %s", failure)
        await self._conversations.record(turn.conversation_id, turn.asked, AIMessage(partial, id=uuid.uuid4().hex))
        turn.notices.append(f"the answer was cut off: {failure}")
        return turn.result(partial, registry.cited(partial), interrupted=True, error=failure)

    def _scope(self, top_k: int | None) -> CacheScope:
        """Where this turn's answer is cached; a per-call `top_k` equal to the default shares the default's."""
        from chains.cache import CacheScope

        k = top_k or self._retriever.settings.top_k
        return CacheScope(self._retriever.index_version, self._model_name, PROMPT_VERSION, top_k=k)

    async def _lookup(self, turn: _Turn, scope: CacheScope) -> Lookup:
        assert self._cache is not None
        with turn.trace.stage("cache_lookup"):
            return await asyncio.to_thread(self._cache.lookup, turn.standalone, scope)

    def _shared(self, lookup: Lookup | None) -> list[float] | None:
        """The cache lookup's embedding of the question, when retrieval uses the same model."""
        return lookup.vector if lookup is not None and self._share_vector else None

    async def _store(self, question: str, scope: CacheScope, result: TurnResult, vector: list[float] | None) -> None:
        from chains.cache import CachedAnswer

        assert self._cache is not None
        entry = CachedAnswer(result.answer, [s.to_dict() for s in result.sources], time.time())
        await asyncio.to_thread(self._cache.store, question, scope, entry, vector=vector)

    def _lock(self, conversation_id: str) -> asyncio.Lock:
        """One turn at a time per conversation (the lock lives while any turn holds it)."""
        lock = self._locks.get(conversation_id)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[conversation_id] = lock
        return lock


@dataclass(frozen=True)
class _Options:
    """Per-call options of the public methods."""

    top_k: int | None = None
    model_settings: dict[str, Any] = field(default_factory=dict)
    on_sources: SourcesCallback | None = None

    def __post_init__(self) -> None:
        if self.top_k is not None and not 1 <= self.top_k <= MAX_TOP_K:
            raise QuestionError(f"top_k must be between 1 and {MAX_TOP_K}, not {self.top_k}")

    def announce(self, sources: list[Source]) -> None:
        if self.on_sources is not None:
            self.on_sources(sources)


@dataclass
class _Turn:
    """The pipeline's record of one turn, frozen into a `TurnResult` at the end."""

    conversation_id: str
    asked: HumanMessage
    standalone: str
    """The question rewritten without the conversation; the question itself until then."""
    notices: list[str]
    trace: TurnTrace = field(default_factory=TurnTrace)

    def result(
        self,
        answer: str,
        sources: Sequence[Source],
        *,
        cached: bool = False,
        retrieval_only: bool = False,
        interrupted: bool = False,
        error: str | None = None,
    ) -> TurnResult:
        return TurnResult(
            answer=answer,
            sources=tuple(sources),
            conversation_id=self.conversation_id,
            question=self.asked.text,
            standalone_question=self.standalone,
            cached=cached,
            retrieval_only=retrieval_only,
            interrupted=interrupted,
            notices=tuple(self.notices),
            timings=self.trace.timings(),
            tokens=self.trace.usage(),
            steps=tuple(self.trace.steps),
            error=error,
        )


def _close_parts(parts: list[object]) -> None:
    for part in reversed(parts):
        close = getattr(part, "close", None)
        if callable(close):
            close()


def _release(parts: list[object], clients: list[Any]) -> None:
    """Close what a failed `from_settings` built; async HTTP clients close on a throwaway loop."""
    _close_parts(parts)
    if clients:
        runner = LoopThread(name="rag-agent-cleanup")
        try:
            for client in clients:
                runner.run(client.aclose())
        finally:
            runner.close()
