"""The query API (FastAPI, served by uvicorn: `mmrag api`): the index over HTTP for programs.

- `POST /v1/query` {"question", "top_k", "mode", "sources", "files", "modalities", "answer", "images"}
  (all but `question` optional, the CLI's defaults) returns exactly `mmrag query --json`'s object.
- `GET /v1/status` returns `mmrag status --json`'s object; `GET /healthz` says the process is up;
  `GET /metrics` Prometheus' text format (`mmrag.serve.metrics`; a key that reads every source).
- `POST /v1/chat/completions` (and `GET /v1/models`): OpenAI's chat API over the index, model
  `mmrag`: the last user message is the question, the reply is the answer with `[n]` citations (the
  retrieved context when no LLM is configured), `stream` gives server-sent events; the hits and
  citations travel in an extra `mmrag` field. Extra fields `top_k`, `mode`, `sources`... as above.

- `GET /v1/images/{id}`: the picture of a hit (its `image_url`), by row id, from the data dir's blob
  store; nothing in the request becomes a path.

Models, the Milvus client and the graph load once per server (`QueryService`). With `MMRAG_API_KEY` or
`MMRAG_API_KEYS` set every route but /healthz wants `Authorization: Bearer <key>`, and each key reads
only its sources (`mmrag.serve.access`): a request for another source is a 403, and its hits, graph context,
status and images never show one. Requests are bounded: question length, top_k, body size, and
requests in flight per key (429 beyond). Bad input gets a 4xx whose body is
`{"error": {"message": one line, "type": ...}}`, OpenAI's error shape. A part that is down for a while
(the Milvus Lite index held by another process, a model server or `up`'s embedding service restarting)
gets a 503 with the reason (and `Retry-After` for a model server), never a 500.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
import uuid
from typing import Any, Literal, Optional

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from mmrag.config import Settings
from mmrag.redact import scrub
from mmrag.serve.access import Forbidden, Scope, keyring, scope_of
from mmrag.serve.metrics import ApiMetrics
from mmrag.serve.service import (
    MAX_QUESTION_CHARS,
    MAX_TOP_K,
    QueryError,
    QueryService,
    status_json,
)

MAX_CONCURRENT = 8  # requests that search at once; more wait their turn
MAX_PER_KEY = 4  # requests of one key in flight at once; more get 429
MAX_BODY_BYTES = 256 * 1024  # a question, its options and a chat history; images are not uploaded
ROW_ID = re.compile(r"[0-9a-f]{40}")
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
               ".gif": "image/gif", ".bmp": "image/bmp", ".tif": "image/tiff", ".tiff": "image/tiff"}


class _SearchOptions(BaseModel):
    """What both routes take besides the question: the CLI's flags, with its defaults."""

    top_k: int = Field(5, ge=1, le=MAX_TOP_K)
    mode: str = "naive"
    sources: Optional[list[str]] = None
    files: Optional[list[str]] = None
    modalities: Optional[list[str]] = None
    images: bool = True


class QueryBody(_SearchOptions):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
    answer: bool = False


class ChatMessage(BaseModel):
    role: str
    content: Any = ""


class ChatBody(_SearchOptions):
    model_config = ConfigDict(extra="allow")

    model: str = "mmrag"
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": " ".join(str(message).split())[:500], "type": kind}}, status_code=status)


def _text(content: Any) -> str:
    """A chat message's text: a string, or the text parts of OpenAI's content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def create_app(settings: Settings | None = None, api_key: str | None = None, warm: bool = True,
               keys: dict[str, Scope] | None = None) -> FastAPI:
    """`keys`: API key -> scope (default: MMRAG_API_KEYS and MMRAG_API_KEY); `api_key`: one more key
    that reads every source. No key at all = an open API (loopback only, `mmrag api` checks)."""
    settings = settings or Settings.from_env()
    keys = dict(keyring() if keys is None else keys)
    if api_key:
        keys.setdefault(api_key, Scope(None, label="MMRAG_API_KEY"))
    service = QueryService(settings)
    gate = threading.BoundedSemaphore(MAX_CONCURRENT)
    per_key: dict[str, threading.BoundedSemaphore] = {}
    per_key_lock = threading.Lock()
    app = FastAPI(title="mmrag", summary="Query a multimodal RAG index", docs_url=None, redoc_url=None)
    app.add_middleware(_BodyLimit, limit=MAX_BODY_BYTES)
    metrics = ApiMetrics(settings.state_path, settings.home)
    app.middleware("http")(metrics.middleware())
    app.state.service = service

    def caller(request: Request) -> Scope:
        scope = scope_of(keys, request.headers.get("authorization"))
        if scope is None:
            raise _AuthError()
        return scope

    @contextlib.contextmanager
    def turn(scope: Scope):
        with per_key_lock:
            sem = per_key.setdefault(scope.label, threading.BoundedSemaphore(MAX_PER_KEY))
        if not sem.acquire(blocking=False):
            raise _TooMany()
        try:
            with gate:
                yield
        finally:
            sem.release()

    @app.exception_handler(_AuthError)
    def _auth(_request, _exc):
        return _error(401, "missing or wrong API key (Authorization: Bearer <key>)", "authentication_error")

    @app.exception_handler(Forbidden)
    def _forbidden(_request, exc: Forbidden):
        return _error(403, str(exc), "permission_error")

    @app.exception_handler(_TooMany)
    def _too_many(_request, _exc):
        return _error(429, f"more than {MAX_PER_KEY} requests of this API key in flight: retry when one has finished",
                      "rate_limit_error")

    @app.exception_handler(RequestValidationError)
    def _invalid(_request, exc: RequestValidationError):
        e = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
        return _error(400, f"{where}: {e.get('msg')}" if where else e.get("msg", "invalid request"))

    @app.exception_handler(QueryError)
    def _bad_query(_request, exc: QueryError):
        return _error(400, str(exc))

    @app.exception_handler(Exception)
    def _failed(_request, exc: Exception):
        from mmrag.index.milvus_store import IndexBusyError

        from mmrag.models.llm import LLMError

        if isinstance(exc, IndexBusyError):
            return _error(503, str(exc), "index_busy")
        if isinstance(exc, LLMError) and exc.retryable:  # a model server down or restarting: worth a retry
            reply = _error(503, f"a model server is unavailable, retry shortly: {exc}", "model_unavailable")
            reply.headers["Retry-After"] = "5"
            return reply
        return _error(500, scrub(f"{type(exc).__name__}: {exc}"), "server_error")

    @app.get("/healthz")
    def healthz() -> dict:
        """200 while this API answers. Under `mmrag up`, also each part's state (`mmrag.serve.health`):
        `status` is "degraded" when a part is broken, restarting or stopped ("starting" while one starts)."""
        from mmrag.serve import health

        board = health.read(settings.home)
        if board is None:
            return {"status": "ok"}
        return {"status": board["status"], "parts": {name: {k: p.get(k) for k in ("state", "since", "reason", "restarts",
                                                                                    "failures")}
                                                     for name, p in board["parts"].items()}}

    @app.get("/metrics")
    def prometheus_metrics(scope: Scope = Depends(caller)):  # noqa: B008 - FastAPI's dependency idiom
        """Prometheus' text format (mmrag.serve.metrics). The counts cover every source: a key
        limited to some sources gets 403."""
        if not scope.everything:
            raise Forbidden("/metrics counts every source: it needs a key that reads all of them")
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/v1/status")
    def status(scope: Scope = Depends(caller)) -> dict:  # noqa: B008 - FastAPI's dependency idiom
        return status_json(settings, scope)

    @app.post("/v1/query")
    def query(body: QueryBody, scope: Scope = Depends(caller)) -> dict:  # noqa: B008 - FastAPI's dependency idiom
        with turn(scope):
            out = service.query(body.question, top_k=body.top_k, mode=body.mode, sources=body.sources,
                                files=body.files, modalities=body.modalities, answer=body.answer, images=body.images,
                                scope=scope)
        return _with_image_urls(out)

    @app.get("/v1/images/{row_id}")
    def image(row_id: str, scope: Scope = Depends(caller)):  # noqa: B008 - FastAPI's dependency idiom
        """A hit's picture by row id. The id must look like one (40 hex digits) and name a row of a
        source the key may read; the file served is that row's blob, and only if it lies in the data
        dir's blob store. Anything else is a 404, so ids of other sources are not even confirmed."""
        if not ROW_ID.fullmatch(row_id):
            return _error(404, "no such image", "not_found_error")
        row = service.store().image_row(row_id)
        blobs = os.path.realpath(settings.blobs_dir)
        path = os.path.realpath(row["image_path"]) if row else ""
        if (not row or not scope.allows(row.get("source", "")) or not path.startswith(blobs + os.sep)
                or not os.path.isfile(path)):
            return _error(404, "no such image", "not_found_error")
        return FileResponse(path, media_type=IMAGE_TYPES.get(os.path.splitext(path)[1].lower(),
                                                             "application/octet-stream"))

    @app.get("/v1/models", dependencies=[Depends(caller)])
    def models() -> dict:
        return {"object": "list", "data": [{"id": "mmrag", "object": "model", "created": 0, "owned_by": "mmrag"}]}

    @app.post("/v1/chat/completions")
    def chat(body: ChatBody, scope: Scope = Depends(caller)):  # noqa: B008 - FastAPI's dependency idiom
        question = next((_text(m.content) for m in reversed(body.messages) if m.role == "user"), "").strip()
        if not question:
            raise QueryError("messages hold no user message with text")
        if len(question) > MAX_QUESTION_CHARS:
            raise QueryError(f"the question is longer than {MAX_QUESTION_CHARS} characters")
        with turn(scope):
            out = _with_image_urls(service.query(question, top_k=body.top_k, mode=body.mode, sources=body.sources,
                                                 files=body.files, modalities=body.modalities, answer=True,
                                                 images=body.images, scope=scope))
        content = out["answer"] if out["answer_status"] != "no_llm" else _context_reply(out["hits"])
        extra = {"answer_status": out["answer_status"], "citations": out["citations"], "hits": out["hits"],
                 "usage": out["usage"]}
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if body.stream:
            return StreamingResponse(_sse(cid, created, content, extra), media_type="text/event-stream")
        return {"id": cid, "object": "chat.completion", "created": created, "model": "mmrag",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": "stop"}],
                "usage": out["usage"], "mmrag": extra}

    if warm:
        threading.Thread(target=_warm, args=(service,), name="mmrag-warm-up", daemon=True).start()
    return app


class _AuthError(Exception):
    pass


class _TooMany(Exception):
    pass


class _BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413 before the app reads it (by its
    Content-Length, or by counting a chunked body as it arrives)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        too_big = _error(413, f"the request body is over {self.limit} bytes", "invalid_request_error")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await too_big(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooBig()
            return msg

        try:
            await self.app(scope, counted, send)
        except _BodyTooBig:
            await too_big(scope, receive, send)


class _BodyTooBig(Exception):
    pass


def _with_image_urls(out: dict) -> dict:
    """Hits that have a picture get `image_url`, the API's route for it (the server-side path stays)."""
    for h in out.get("hits", []):
        if h.get("image_path"):
            h["image_url"] = f"/v1/images/{h['id']}"
    return out


def _warm(service: QueryService) -> None:
    try:
        service.warm_up()
    except Exception:  # noqa: BLE001 - the first request that needs it reports it
        pass


def _context_reply(hits: list[dict]) -> str:
    from mmrag.retrieval.answer import where

    if not hits:
        return "No LLM is configured, and nothing in the index matches the question."
    lines = ["No LLM is configured (MMRAG_LLM_URL): the passages retrieved for the question:"]
    for n, h in enumerate(hits, 1):
        lines.append(f"[{n}] {h['source']}:{h['file']} {where(h)}: {' '.join(h['text'].split())[:300]}")
    return "\n".join(lines)


def _sse(cid: str, created: int, content: str, extra: dict):
    def chunk(delta: dict, finish: Literal["stop"] | None = None, **more) -> str:
        obj = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": "mmrag",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **more}
        return f"data: {json.dumps(obj)}\n\n"

    yield chunk({"role": "assistant"})
    for start in range(0, len(content), 200):
        yield chunk({"content": content[start:start + 200]})
    yield chunk({}, "stop", mmrag=extra)
    yield "data: [DONE]\n\n"
