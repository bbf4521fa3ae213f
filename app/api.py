"""The OpenAI-compatible RAG API (FastAPI + uvicorn): `make api`, or `python -m app.api`.

Every route calls the one `ChatService` of the process (of the caller's tenant, when
`api.keys_file` maps keys to tenants: `app.tenants`); the agent runs on its own event loop
thread and its blocking parts in worker threads, so concurrent requests never wait on each
other here. A client that disconnects before its answer is done (streamed or not) cancels its
model request. Bearer auth (every route but /health) when `api.api_key` or `api.keys_file` is set;
body and upload size limits; loopback by default; CORS only for `api.cors_origins`. Schema: docs/api.md.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import asdict
from typing import Annotated, Any, TypeVar, cast

import anyio
import openai
from fastapi import APIRouter, Depends, FastAPI, File, Header, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api_metrics import ApiMetrics
from app.api_schema import (
    ChatRequest,
    FeedbackRequest,
    chunk_json,
    completion_json,
    error_json,
    rag_fields,
    source_json,
    url_citations,
    usage_json,
)
from app.documents import DocumentError, UnknownDocumentError, UploadTooLargeError
from app.errors import NotFoundError
from app.redaction import install_redaction
from app.service import ChatService
from app.store import ExportFormat, format_rows
from app.tenants import ServiceRegistry
from chains import Source, TurnResult
from chains.conversations import ConversationBusyError, ConversationDamagedError
from chains.questions import QuestionError
from config.settings import Settings

log = logging.getLogger(__name__)

MULTIPART_OVERHEAD = 1_000_000
"""Bytes allowed in an upload request beyond the files themselves (multipart headers)."""

_TOO_LARGE = (
    "the request body is too large: chat requests take at most api.max_body_kb, uploads "
    "api.max_upload_mb per file and api.max_upload_files files"
)
_FRAMEWORK_MESSAGES = {
    "There was an error parsing the body": "the request body could not be parsed: send JSON encoded as UTF-8",
}
_ERROR_KINDS = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    409: "conflict",
    413: "request_too_large",
    415: "invalid_request_error",
}
CLIENT_CLOSED_REQUEST = 499
"""Status recorded for a request whose client left before the answer (nginx's convention; nobody receives it)."""
T = TypeVar("T")


def create_app(settings: Settings, service: ChatService | None = None) -> FastAPI:
    """The API over `service` (built from `settings` at start-up when not given, and closed at shutdown)."""
    install_redaction(settings)
    metrics = ApiMetrics()
    model_name = str(settings.llm.model)
    upload_limit = int(settings.api.max_upload_mb * 1_000_000) * settings.api.max_upload_files + MULTIPART_OVERHEAD

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = ServiceRegistry(settings, service)
        if not registry.multi_tenant:  # one service, built now: a broken index stops the start
            await asyncio.to_thread(registry.service, None)
        app.state.services = registry
        try:
            yield
        finally:
            await asyncio.to_thread(registry.close)

    app = FastAPI(
        title="ragchat API",
        summary="OpenAI-compatible chat over your documents, with sources",
        lifespan=lifespan,
    )
    app.state.metrics = metrics
    if settings.api.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.api.cors_origins, allow_methods=["*"], allow_headers=["*"]
        )
    app.add_middleware(_BodyLimitMiddleware, limit=settings.api.max_body_kb * 1024, upload_limit=upload_limit)
    app.add_middleware(_MetricsMiddleware, metrics=metrics)
    _add_error_handlers(app, metrics)

    @app.get("/health")
    def health(request: Request) -> JSONResponse:
        """200 when engine, index and cache are all fine, else 503 naming the failing part."""
        parts = cast(ServiceRegistry, request.app.state.services).health()
        failing = [name for name, part in parts.items() if not part.ok]
        body = {
            "status": "degraded" if failing else "ok",
            "failing": failing,
            **{k: asdict(v) for k, v in parts.items()},
        }
        return JSONResponse(body, status_code=503 if failing else 200)

    api = APIRouter(dependencies=[Depends(_tenant)])

    @api.get("/metrics")
    def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @api.get("/v1/models")
    def models() -> dict[str, Any]:
        card = {"id": model_name, "object": "model", "created": 0, "owned_by": "ragchat"}
        return {"object": "list", "data": [card]}

    @api.post("/v1/chat/completions", response_model=None, dependencies=[Depends(_json_body)])
    async def chat(
        body: ChatRequest,
        service: Service,
        request: Request,
        x_conversation_id: Annotated[str | None, Header()] = None,
    ) -> Response:
        if body.model not in (None, model_name):
            raise HTTPException(404, f"model {body.model!r} does not exist; this server serves {model_name!r}")
        if x_conversation_id and body.conversation_id and x_conversation_id != body.conversation_id:
            raise HTTPException(400, "X-Conversation-Id header and conversation_id field disagree")
        try:
            question = body.question()
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        conversation_id = x_conversation_id or body.conversation_id
        if conversation_id is None:
            conversation_id = uuid.uuid4().hex
            history = body.history()
            if history:
                await asyncio.to_thread(service.add_history, conversation_id, history)
        turn_id = uuid.uuid4().hex
        completion_id = f"chatcmpl-{turn_id}"
        retrieved: list[Source] = []
        pieces = cast(
            AsyncGenerator[str | TurnResult],
            service.astream(
                question,
                conversation_id,
                use_cache=body.use_cache,
                top_k=body.top_k,
                max_tokens=body.max_completion_tokens or body.max_tokens,
                temperature=body.temperature,
                turn_id=turn_id,
                on_sources=retrieved.extend,
            ),
        )
        headers = {"X-Conversation-Id": conversation_id}
        if not body.stream:
            async with _closing(pieces):
                result = await _unless_disconnected(request, _result(pieces))
            if result is None:  # the client left: its model request was cancelled with the turn
                metrics.turns.labels("stopped").inc()
                return Response(status_code=CLIENT_CLOSED_REQUEST)
            metrics.turn(result)
            if result.interrupted:
                raise HTTPException(502, _cut_off(result), headers=headers)
            return JSONResponse(completion_json(result, completion_id, turn_id, model_name), headers=headers)
        first = await anext(pieces)  # errors (a bad question) become HTTP errors, not a broken stream

        async def events() -> AsyncIterator[str]:
            metrics.active_streams.inc()
            finished = False
            try:
                # The first chunk carries the passages and already the first text (one write, not two).
                piece = first
                delta = {"role": "assistant", "content": piece if isinstance(piece, str) else ""}
                retrieved_json = [source_json(s) for s in retrieved]
                extra = {"conversation_id": conversation_id, "turn_id": turn_id, "retrieved": retrieved_json}
                yield _sse(chunk_json(completion_id, model_name, delta, **extra))
                if isinstance(piece, str):
                    piece = await anext(pieces)
                while not isinstance(piece, TurnResult):
                    yield _sse(chunk_json(completion_id, model_name, {"content": piece}))
                    piece = await anext(pieces)
                metrics.turn(piece)
                if piece.interrupted:  # the text so far is all there is: say so, as OpenAI does mid-stream
                    yield _sse(error_json(_cut_off(piece), "server_error", code="model_server_failed"))
                    yield "data: [DONE]\n\n"
                    finished = True
                    return
                final = chunk_json(
                    completion_id,
                    model_name,
                    {"annotations": url_citations(piece.answer, piece.sources)},
                    finish_reason="stop",
                    usage=usage_json(piece),
                    **rag_fields(piece, turn_id),
                )
                yield _sse(final)
                yield "data: [DONE]\n\n"
                finished = True
            except Exception as exc:  # headers are sent: report in the stream, as OpenAI does
                log.exception("turn %s failed mid-stream", turn_id)
                metrics.errors.labels("internal").inc()
                yield _sse(error_json(f"the answer failed: {exc}", "api_error"))
                yield "data: [DONE]\n\n"
                finished = True
            finally:
                metrics.active_streams.dec()
                if not finished:
                    metrics.turns.labels("stopped").inc()
                await pieces.aclose()

        sse_headers = {**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return _EventStream(events(), media_type="text/event-stream", headers=sse_headers)

    @api.post("/v1/feedback", dependencies=[Depends(_json_body)])
    def feedback(body: FeedbackRequest, service: Service) -> dict[str, Any]:
        """Rate a stored turn, as the UI's thumbs do; a second rating of the turn replaces the first."""
        service.record_feedback(body.conversation_id, body.turn_id, body.score, body.comment)
        return body.model_dump()

    @api.get("/v1/feedback")
    def export_feedback(service: Service, format: ExportFormat = "jsonl") -> Response:
        """Every rating with its question, answer and cited files, as JSON Lines or CSV."""
        text = format_rows(service.export_feedback(), format)
        media_type = "text/csv; charset=utf-8" if format == "csv" else "application/jsonl; charset=utf-8"
        disposition = f'attachment; filename="feedback.{format}"'
        return Response(text, media_type=media_type, headers={"Content-Disposition": disposition})

    @api.post("/v1/documents", status_code=202, dependencies=[Depends(_multipart_body)])
    async def upload(files: Annotated[list[UploadFile], File()], service: Service) -> dict[str, Any]:
        """Save the files into the documents folder and start ingesting them; poll the job."""
        if len(files) > settings.api.max_upload_files:
            raise UploadTooLargeError(f"{len(files)} files; at most {settings.api.max_upload_files} per upload")
        limit = int(settings.api.max_upload_mb * 1_000_000)
        contents = []
        for item in files:
            data = await item.read(limit + 1)
            if len(data) > limit:
                raise UploadTooLargeError(
                    f"{item.filename!r} is larger than {settings.api.max_upload_mb:g} MB (api.max_upload_mb)"
                )
            contents.append((item.filename or "upload", data))
        saved = await asyncio.to_thread(service.save_uploads, contents)
        job_id = service.start_ingest([service.uploads_dir / s.name for s in saved])
        return {"job": asdict(service.job(job_id)), "files": [asdict(s) for s in saved]}

    @api.get("/v1/documents/jobs/{job_id}")
    def job(job_id: str, service: Service) -> dict[str, Any]:
        return asdict(service.job(job_id))

    @api.get("/v1/documents")
    def documents(service: Service) -> dict[str, Any]:
        return {"object": "list", "data": [asdict(d) for d in service.documents()]}

    @api.get("/v1/documents/{path:path}")
    def document_file(path: str, service: Service) -> FileResponse:
        """The original file of an indexed document (what citation URLs point at)."""
        known = {d.path for d in service.documents()}
        if path not in known or "\x00" in path:
            raise UnknownDocumentError(f"no document {path!r} in the documents folder")
        docs = service.settings.index.docs_dir.resolve()
        file = (docs / path).resolve()
        if path not in known or not file.is_relative_to(docs) or not file.is_file():
            raise UnknownDocumentError(f"no document {path!r} in the documents folder")
        return FileResponse(file, filename=file.name)

    @api.delete("/v1/documents/{path:path}", status_code=204)
    def delete_document(path: str, service: Service) -> Response:
        service.delete_document(path)
        return Response(status_code=204)

    @api.get("/v1/index")
    def index(service: Service) -> dict[str, Any]:
        cache = service.cache_stats()
        return {**asdict(service.index_stats()), "cache": None if cache is None else asdict(cache)}

    app.include_router(api)
    return app


def _tenant(request: Request, authorization: Annotated[str | None, Header()] = None) -> str | None:
    """The caller's tenant (None without a keys file); 401 for a missing or wrong key. Keys are
    compared in constant time and never logged."""
    registry = cast(ServiceRegistry, request.app.state.services)
    key = registry.settings.api.api_key
    if key is None and not registry.multi_tenant:
        return None
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer" and token:
        if registry.multi_tenant:
            tenant = registry.tenant_for(token)
            if tenant is not None:
                return tenant
        elif key is not None and hmac.compare_digest(token.encode(), key.get_secret_value().encode()):
            return None
    raise HTTPException(401, "missing or wrong API key", headers={"WWW-Authenticate": "Bearer"})


def _service(request: Request, tenant: Annotated[str | None, Depends(_tenant)]) -> ChatService:
    """The service of the caller's tenant (opened on its first request, in a worker thread)."""
    return cast(ServiceRegistry, request.app.state.services).service(tenant)


Service = Annotated[ChatService, Depends(_service)]


def _cut_off(result: TurnResult) -> str:
    return f"the answer was cut off: {result.error}; the partial answer is stored in the conversation, marked stopped"


def _json_body(content_type: Annotated[str | None, Header()] = None) -> None:
    """415 for a chat request that is not JSON (a missing Content-Type is read as JSON)."""
    media = (content_type or "application/json").partition(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise HTTPException(415, f"send the request as JSON (Content-Type: application/json), not {media!r}")


def _multipart_body(content_type: Annotated[str | None, Header()] = None) -> None:
    media = (content_type or "").partition(";")[0].strip().lower()
    if media != "multipart/form-data":
        raise HTTPException(
            415, f"upload files as multipart/form-data (field 'files'), not {media or 'no content type'!r}"
        )


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _result(pieces: AsyncIterator[str | TurnResult]) -> TurnResult:
    """The turn's result, after its text pieces (a non-streamed answer)."""
    async for piece in pieces:
        if isinstance(piece, TurnResult):
            return piece
    raise RuntimeError("the turn ended without a result")


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """`work`'s result, or None once the client has gone away: `work` is then cancelled where it
    waits, which cancels the turn and its model request (vLLM aborts it). Starlette cancels only
    streamed responses when the client leaves; a plain handler would run to the end unseen."""
    result: T | None = None
    error: Exception | None = None
    async with anyio.create_task_group() as group:

        async def run() -> None:
            nonlocal result, error
            try:
                result = await work
            except Exception as exc:  # raised below as itself, not wrapped in the task group's ExceptionGroup
                error = exc
            group.cancel_scope.cancel()

        async def watch() -> None:
            # The body has been read: the next message is the disconnect (or never comes).
            while (await request.receive())["type"] != "http.disconnect":
                pass
            group.cancel_scope.cancel()

        group.start_soon(run)
        group.start_soon(watch)
    if error is not None:
        raise error
    return result


@asynccontextmanager
async def _closing(items: AsyncGenerator[Any]) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await items.aclose()


class _EventStream(StreamingResponse):
    """Server-sent events that stop as soon as the client goes away: the generator is cancelled
    where it waits (so the model request is cancelled on the engine) and then closed outside the
    cancelled scope, so its clean-up can still await. Starlette does this only for old ASGI specs."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as group:

            async def stream() -> None:
                with suppress(OSError):  # the client went away while we were sending
                    await self.stream_response(send)
                group.cancel_scope.cancel()

            group.start_soon(stream)
            await self.listen_for_disconnect(receive)
            group.cancel_scope.cancel()
        aclose = getattr(self.body_iterator, "aclose", None)
        if aclose is not None:
            await aclose()


class _BodyTooLargeError(Exception):
    """Raised into the app when a request body passes its limit (the 413 is already sent)."""


class _BodyLimitMiddleware:
    """Request-body limits that stop reading: a declared Content-Length above the limit is refused
    before any of the body is read, and a streamed (chunked) body as soon as it passes the limit.
    The 413 is in OpenAI's error shape and carries `Connection: close`, so the server drops the
    connection instead of draining the rest of a 1 GB upload (FastAPI's own `max_body_size`
    answers in plain text and keeps reading)."""

    def __init__(self, app: ASGIApp, limit: int, upload_limit: int) -> None:
        self.app = app
        self.limit = limit
        self.upload_limit = upload_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope["method"] == "POST" and scope["path"].rstrip("/") == "/v1/documents"
        limit = self.upload_limit if upload else self.limit
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await _refuse(send)
            return
        received = 0
        started = refused = False

        async def limited_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit and not started:
                    refused = True
                    await _refuse(send)
                    raise _BodyTooLargeError
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the 413 is out; whatever the app answers to _BodyTooLargeError is dropped
            started = started or message["type"] == "http.response.start"
            await send(message)

        with suppress(_BodyTooLargeError):
            await self.app(scope, limited_receive, guarded_send)


async def _refuse(send: Send) -> None:
    body = json.dumps(error_json(_TOO_LARGE, "request_too_large")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 413, "headers": [*headers, (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class _MetricsMiddleware:
    """Counts requests by route template (not raw path: ids would explode the label set) and status."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.request_seconds.labels(route).observe(time.perf_counter() - started)


def _add_error_handlers(app: FastAPI, metrics: ApiMetrics) -> None:
    """Every error in OpenAI's shape (`{"error": {"message", "type", ...}}`), counted by kind."""

    def reply(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> JSONResponse:
        metrics.errors.labels(kind).inc()
        return JSONResponse(error_json(message, kind), status_code=status, headers=headers)

    @app.exception_handler(StarletteHTTPException)  # also FastAPI's own: unparsable bodies, unknown routes
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = _ERROR_KINDS.get(exc.status_code, "api_error")
        message = _FRAMEWORK_MESSAGES.get(str(exc.detail), str(exc.detail))
        return reply(exc.status_code, message, kind, dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return reply(400, f"invalid request: {problems}", "invalid_request_error")

    # Most specific first: an error is answered by the first kind it is an instance of.
    statuses: list[tuple[type[Exception], int, str]] = [
        (QuestionError, 400, "invalid_request_error"),
        (ConversationBusyError, 503, "conversation_store_busy"),
        (ConversationDamagedError, 409, "conversation_damaged"),
        (UploadTooLargeError, 413, "request_too_large"),
        (DocumentError, 400, "invalid_request_error"),
        (NotFoundError, 404, "not_found_error"),
    ]

    async def known(request: Request, exc: Exception) -> JSONResponse:
        status, kind = next((s, k) for cls, s, k in statuses if isinstance(exc, cls))
        return reply(status, str(exc), kind)

    for cls, _, _ in statuses:
        app.add_exception_handler(cls, known)

    @app.exception_handler(openai.BadRequestError)
    async def model_refused(request: Request, exc: openai.BadRequestError) -> JSONResponse:
        return reply(400, f"the model server refused the request: {exc.message}", "invalid_request_error")

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return reply(500, f"internal error: {exc}", "internal")


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m app.api [--profile P] [--host H] [--port N]`: serve until Ctrl-C."""
    import uvicorn

    from config import SettingsError, load_settings

    parser = argparse.ArgumentParser(prog="python -m app.api", description="Serve the OpenAI-compatible RAG API.")
    parser.add_argument("--profile", help="settings profile (default: RAG_PROFILE or balanced)")
    parser.add_argument("--host", help="interface (default api.host, loopback)")
    parser.add_argument("--port", type=int, help="port (default api.port)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
        settings = load_settings(args.profile, **({"api": overrides} if overrides else {}))
    except SettingsError as exc:
        print(f"error: {exc}")
        return 2
    print(f"RAG API on http://{settings.api.host}:{settings.api.port}/v1 (model {settings.llm.model!r})", flush=True)
    uvicorn.run(create_app(settings), host=settings.api.host, port=settings.api.port, log_level="info")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
