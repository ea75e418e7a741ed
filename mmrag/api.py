"""The query API (FastAPI, served by uvicorn: `mmrag api`): the index over HTTP for programs.

- `POST /v1/query` {"question", "top_k", "mode", "sources", "files", "modalities", "answer", "images"}
  (all but `question` optional, the CLI's defaults) returns exactly `mmrag query --json`'s object.
- `GET /v1/status` returns `mmrag status --json`'s object; `GET /healthz` says the process is up.
- `POST /v1/chat/completions` (and `GET /v1/models`): OpenAI's chat API over the index, model
  `mmrag`: the last user message is the question, the reply is the answer with `[n]` citations (the
  retrieved context when no LLM is configured), `stream` gives server-sent events; the hits and
  citations travel in an extra `mmrag` field. Extra fields `top_k`, `mode`, `sources`... as above.

Models, the Milvus client and the graph load once per server (`QueryService`). With `MMRAG_API_KEY`
set every route but /healthz wants `Authorization: Bearer <key>`. Bad input gets a 4xx whose body is
`{"error": {"message": one line, "type": ...}}`, OpenAI's error shape.
"""

from __future__ import annotations

import hmac
import json
import threading
import time
import uuid
from typing import Any, Literal, Optional

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from mmrag.config import Settings
from mmrag.service import MAX_TOP_K, QueryError, QueryService, status_json

MAX_QUESTION_CHARS = 4000
MAX_CONCURRENT = 8  # requests that search at once; more wait their turn


class QueryBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
    top_k: int = Field(5, ge=1, le=MAX_TOP_K)
    mode: str = "naive"
    sources: Optional[list[str]] = None
    files: Optional[list[str]] = None
    modalities: Optional[list[str]] = None
    answer: bool = False
    images: bool = True


class ChatMessage(BaseModel):
    role: str
    content: Any = ""


class ChatBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = "mmrag"
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    top_k: int = Field(5, ge=1, le=MAX_TOP_K)
    mode: str = "naive"
    sources: Optional[list[str]] = None
    files: Optional[list[str]] = None
    modalities: Optional[list[str]] = None
    images: bool = True


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": " ".join(str(message).split())[:500], "type": kind}}, status_code=status)


def _text(content: Any) -> str:
    """A chat message's text: a string, or the text parts of OpenAI's content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def create_app(settings: Settings | None = None, api_key: str | None = None, warm: bool = True) -> FastAPI:
    settings = settings or Settings.from_env()
    service = QueryService(settings)
    gate = threading.BoundedSemaphore(MAX_CONCURRENT)
    app = FastAPI(title="mmrag", summary="Query a multimodal RAG index", docs_url=None, redoc_url=None)
    app.state.service = service

    def authorized(request: Request) -> None:
        if not api_key:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            raise _AuthError()

    @app.exception_handler(_AuthError)
    def _auth(_request, _exc):
        return _error(401, "missing or wrong API key (Authorization: Bearer <MMRAG_API_KEY>)", "authentication_error")

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
        from mmrag.milvus_store import IndexBusyError

        if isinstance(exc, IndexBusyError):
            return _error(503, str(exc), "index_busy")
        return _error(500, f"{type(exc).__name__}: {exc}", "server_error")

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/v1/status", dependencies=[Depends(authorized)])
    def status() -> dict:
        return status_json(settings)

    @app.post("/v1/query", dependencies=[Depends(authorized)])
    def query(body: QueryBody) -> dict:
        with gate:
            return service.query(body.question, top_k=body.top_k, mode=body.mode, sources=body.sources,
                                 files=body.files, modalities=body.modalities, answer=body.answer, images=body.images)

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    def models() -> dict:
        return {"object": "list", "data": [{"id": "mmrag", "object": "model", "created": 0, "owned_by": "mmrag"}]}

    @app.post("/v1/chat/completions", dependencies=[Depends(authorized)])
    def chat(body: ChatBody):
        question = next((_text(m.content) for m in reversed(body.messages) if m.role == "user"), "").strip()
        if not question:
            raise QueryError("messages hold no user message with text")
        if len(question) > MAX_QUESTION_CHARS:
            raise QueryError(f"the question is longer than {MAX_QUESTION_CHARS} characters")
        with gate:
            out = service.query(question, top_k=body.top_k, mode=body.mode, sources=body.sources, files=body.files,
                                modalities=body.modalities, answer=True, images=body.images)
        content = out["answer"] if out["answer_status"] != "no_llm" else _context_reply(out["hits"])
        extra = {"answer_status": out["answer_status"], "citations": out["citations"], "hits": out["hits"]}
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if body.stream:
            return StreamingResponse(_sse(cid, created, content, extra), media_type="text/event-stream")
        return {"id": cid, "object": "chat.completion", "created": created, "model": "mmrag",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}, "mmrag": extra}

    if warm:
        threading.Thread(target=_warm, args=(service,), name="mmrag-warm-up", daemon=True).start()
    return app


class _AuthError(Exception):
    pass


def _warm(service: QueryService) -> None:
    try:
        service.warm_up()
    except Exception:  # noqa: BLE001 - the first request that needs it reports it
        pass


def _context_reply(hits: list[dict]) -> str:
    from mmrag.answer import where

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
