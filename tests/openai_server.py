"""A loopback stand-in for the GPU model server: vLLM's OpenAI-compatible HTTP API.

`FakeOpenAIServer` listens on 127.0.0.1 (a free port) in a daemon thread and answers
`GET /v1/models`, `POST /v1/chat/completions` (text and vision messages, non-streaming) and
`POST /v1/embeddings` in the OpenAI JSON shapes (also vLLM's `messages` form for a multimodal
embedder: `image_embedder` gives a page image's vector), and vLLM's cross-encoder routes `POST /v1/rerank`
(Jina/Cohere shape) and `POST /v1/score` (`rerank_routes` says which it has; `scorer` scores a
(query, passage) pair, default `overlap_score`). Tests script it: `responder` writes the assistant
text, `embedder` the vectors (default `fake_embedding`: a hash of the text, without meaning),
`latency_s` delays every POST, and faults (HTTP status, malformed JSON, a hang, a dropped connection)
are queued with `fail_next` / `malformed_next` / `hang_next` / `drop_next` or decided per request by
`fault_fn`. Every request is recorded; in-flight requests are counted (`max_in_flight`); the usage of
every reply sent is kept (`usage_sent`, summed by `usage_total`: what a client should count). Remote image
URLs are refused, so a test notices if the client would make the server fetch one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


@dataclass
class Fault:
    kind: str = "status"  # status | malformed | hang | drop
    status: int = 500
    message: str = "injected fault"
    seconds: float = 30.0  # how long a hang lasts (cut short when the server closes)


@dataclass
class Recorded:
    method: str
    path: str
    json: Any
    headers: dict[str, str]
    t: float = field(default_factory=time.monotonic)
    usage: dict | None = None  # the `usage` of the reply sent (None: no reply with usage)


def image_parts(request_json: dict) -> list[dict]:
    """The image_url parts of a chat request's messages."""
    out = []
    for m in (request_json or {}).get("messages") or []:
        content = m.get("content")
        if isinstance(content, list):
            out.extend(p for p in content if isinstance(p, dict) and p.get("type") == "image_url")
    return out


def prompt_text(request_json: dict) -> str:
    """All text of a chat request's messages, joined."""
    parts = []
    for m in (request_json or {}).get("messages") or []:
        content = m.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return "\n".join(parts)


def default_responder(request_json: dict) -> str:
    """A short deterministic description that says whether an image came with the request."""
    digest = hashlib.sha256(prompt_text(request_json).encode()).hexdigest()[:8]
    imgs = image_parts(request_json)
    if imgs:
        url = imgs[0]["image_url"]["url"]
        mime = url[5 : url.index(";")] if url.startswith("data:") and ";" in url else "?"
        return f"A fake description of the attached image ({mime}); prompt {digest}."
    return f"A fake description without an image; prompt {digest}."


def lightrag_aware(request_json: dict) -> str:
    """Extraction prompts get LightRAG-format entity lines (up to three capitalised words of the
    chunk), keyword prompts the query's capitalised words, everything else the default reply:
    deterministic. A merge prompt (LightRAG summarizes an entity's descriptions once it has
    `force_llm_summary_on_merge` of them) gets the distinct descriptions of its list, sorted, joined by
    LightRAG's separator: a summary that depends on the facts merged, not on the order in which files
    came and went, so two indexes of one folder built along different histories compare equal (and a
    fact of a deleted file that survived in a summary shows as a difference)."""
    import re

    prompt = prompt_text(request_json)
    # The last <Input Text> block is the chunk (LightRAG's system prompt has examples with their own).
    found = re.findall(r"<Input Text>\s*```\n(.*?)\n```", prompt, re.S)
    if found:
        words = sorted(set(re.findall(r"\b[A-Z][a-z]{3,}\b", found[-1])))[:3]
        d = "<|#|>"
        lines = [f"entity{d}{w}{d}concept{d}{w} as mentioned in the text." for w in words]
        return "\n".join([*lines, "<|COMPLETE|>"])
    if "Description List" in prompt:
        listed = re.findall(r"Description List:\s*```\n(.*?)\n```", prompt, re.S)
        facts: set[str] = set()
        for line in (listed[-1] if listed else "").splitlines():
            try:
                text = json.loads(line).get("Description", "")
            except (ValueError, AttributeError):
                text = line
            facts.update(f.strip() for f in str(text).split("<SEP>") if f.strip())
        return "<SEP>".join(sorted(facts)) or "Merged description."
    query = re.findall(r"User Query: (.*)", prompt)
    if query and "high_level_keywords" in prompt:  # keyword extraction: the query's capitalised words
        words = sorted(set(re.findall(r"\b[A-Z][a-z]{3,}\b", query[-1])))
        return json.dumps({"high_level_keywords": words or [query[-1]], "low_level_keywords": words or [query[-1]]})
    return default_responder(request_json)


def overlap_score(query: str, passage: str) -> float:
    """The share of the query's distinct words (4+ letters, lower-cased) found in the passage: a
    stand-in for a cross-encoder that tests can predict."""
    import re

    q = set(re.findall(r"[a-z]{4,}", query.lower()))
    return round(len(q & set(re.findall(r"[a-z]{4,}", passage.lower()))) / len(q), 6) if q else 0.0


def fake_embedding(text: str, dim: int) -> list[float]:
    """A unit vector derived from sha256(text): the same text always gives the same vector."""
    raw = b""
    counter = 0
    while len(raw) < dim * 2:
        raw += hashlib.sha256(f"{counter}\x00{text}".encode()).digest()
        counter += 1
    vals = [(int.from_bytes(raw[2 * i : 2 * i + 2], "big") / 32767.5) - 1.0 for i in range(dim)]
    norm = math.sqrt(sum(v * v for v in vals)) or 1.0
    return [v / norm for v in vals]


class FakeOpenAIServer:
    def __init__(
        self,
        models: tuple[str, ...] = ("fake-llm", "fake-vlm", "fake-embed"),
        *,
        strict_models: bool = True,
        embedding_dim: int = 16,
        latency_s: float = 0.0,
        api_key: str | None = None,
    ):
        self.models = list(models)
        self.strict_models = strict_models
        self.embedding_dim = embedding_dim
        self.latency_s = latency_s
        self.api_key = api_key  # when set, requests without `Bearer <api_key>` get 401
        self.responder: Callable[[dict], str] = default_responder
        self.embedder: Callable[[str, int], list[float]] = fake_embedding  # (text, dim) -> vector
        self.scorer: Callable[[str, str], float] = overlap_score  # (query, passage) -> relevance
        # vLLM's multimodal embeddings (`messages` instead of `input`): (the request's image data URL, dim) -> vector
        self.image_embedder: Callable[[str, int], list[float]] = fake_embedding
        self.rerank_routes: set[str] = {"/v1/rerank", "/v1/score"}  # vLLM's cross-encoder routes served
        self.fault_fn: Callable[[Recorded], Fault | None] | None = None
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        self._requests: list[Recorded] = []
        self.calls: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self._closing = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> "FakeOpenAIServer":
        self._closing.clear()
        handler = type("Handler", (_Handler,), {"fake": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-openai", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- scripting -------------------------------------------------------------------------------
    def fail_next(self, n: int = 1, status: int = 500, message: str = "injected fault") -> None:
        self._queue(n, Fault("status", status, message))

    def malformed_next(self, n: int = 1) -> None:
        self._queue(n, Fault("malformed"))

    def hang_next(self, n: int = 1, seconds: float = 30.0) -> None:
        self._queue(n, Fault("hang", seconds=seconds))

    def drop_next(self, n: int = 1) -> None:
        self._queue(n, Fault("drop"))

    def _queue(self, n: int, fault: Fault) -> None:
        with self._lock:
            self._faults.extend(fault for _ in range(n))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
        self.fault_fn = None

    def _next_fault(self, rec: Recorded) -> Fault | None:
        with self._lock:
            if self._faults:
                return self._faults.popleft()
        return self.fault_fn(rec) if self.fault_fn else None

    # -- inspection ------------------------------------------------------------------------------
    @property
    def requests(self) -> list[Recorded]:
        with self._lock:
            return list(self._requests)

    def count(self, path: str | None = None) -> int:
        """Requests received on `path` ('/v1/chat/completions'), or on all paths."""
        with self._lock:
            return sum(self.calls.values()) if path is None else self.calls[path]

    def chat_requests(self) -> list[dict]:
        return [r.json for r in self.requests if r.path == "/v1/chat/completions"]

    def usage_sent(self) -> list[tuple[str, dict]]:
        """(model, usage with "images": image parts sent) of every reply sent, in order."""
        return [((r.json or {}).get("model", ""), r.usage) for r in self.requests if r.usage is not None]

    def usage_total(self, since: int = 0) -> dict:
        """The replies' usage summed from the `since`-th request on: requests, prompt_tokens,
        completion_tokens, images, and the same by model ("by_model")."""
        keys = ("requests", "prompt_tokens", "completion_tokens", "images")
        total, by_model = dict.fromkeys(keys, 0), {}
        for r in self.requests[since:]:
            if r.usage is None:
                continue
            model = (r.json or {}).get("model", "")
            for d in (total, by_model.setdefault(model, dict.fromkeys(keys, 0))):
                d["requests"] += 1
                for k in keys[1:]:
                    d[k] += r.usage.get(k, 0)
        return {**total, "by_model": by_model}

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self.calls.clear()
            self.max_in_flight = 0

    def _record(self, rec: Recorded) -> None:
        with self._lock:
            self._requests.append(rec)
            self.calls[rec.path] += 1

    def _enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1


class _Handler(BaseHTTPRequestHandler):
    fake: FakeOpenAIServer
    protocol_version = "HTTP/1.1"
    # Headers and body go out as two writes: with Nagle's algorithm on, the body waits for the client's
    # delayed ACK of the headers on a kept-alive connection (~40 ms per reply, measured: rerank p50 52 ms
    # against 2-12 ms). Real servers (uvicorn under vLLM) set TCP_NODELAY too.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    # -- plumbing --------------------------------------------------------------------------------
    def _send(self, status: int, payload: Any = None, raw: bytes | None = None) -> None:
        body = raw if raw is not None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str, etype: str = "BadRequestError") -> None:
        self._send(status, {"error": {"message": message, "type": etype, "param": None, "code": status}})

    def _authorized(self) -> bool:
        key = self.fake.api_key
        if key is None or self.headers.get("Authorization") == f"Bearer {key}":
            return True
        self._error(401, "Unauthorized", "AuthenticationError")
        return False

    def _faulted(self, rec: Recorded) -> bool:
        """Play the next scripted fault, if any; True when it answered (or hung up on) the request."""
        fault = self.fake._next_fault(rec)
        if fault is None:
            return False
        if fault.kind == "hang":
            self.fake._closing.wait(fault.seconds)
            self.close_connection = True
        elif fault.kind == "drop":
            self.close_connection = True
        elif fault.kind == "malformed":
            self._send(200, raw=b'{"id": "chatcmpl-broken", "choices": [{"message": {"content": "tru')
        else:
            self._error(fault.status, fault.message, "InternalServerError" if fault.status >= 500 else "Error")
        return True

    def do_GET(self) -> None:
        rec = Recorded("GET", self.path, None, dict(self.headers))
        self.fake._record(rec)
        if not self._authorized() or self._faulted(rec):
            return
        if self.path.rstrip("/") == "/v1/models":
            now = int(time.time())
            data = [{"id": m, "object": "model", "created": now, "owned_by": "vllm"} for m in self.fake.models]
            self._send(200, {"object": "list", "data": data})
        else:
            self._error(404, f"Not Found: {self.path}", "NotFoundError")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            body = None
        rec = Recorded("POST", self.path, body, dict(self.headers))
        self.fake._record(rec)
        self.fake._enter()
        try:
            self._post(rec)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout); nothing to answer
        finally:
            self.fake._leave()

    def _post(self, rec: Recorded) -> None:
        fake = self.fake
        if fake.latency_s:
            fake._closing.wait(fake.latency_s)
        if not self._authorized() or self._faulted(rec):
            return
        if not isinstance(rec.json, dict):
            self._error(400, "request body is not a JSON object")
            return
        model = rec.json.get("model")
        if fake.strict_models and model not in fake.models:
            self._error(404, f"The model `{model}` does not exist.", "NotFoundError")
            return
        path = rec.path.rstrip("/")
        if path == "/v1/chat/completions":
            self._chat(rec.json, rec)
        elif path == "/v1/embeddings":
            self._embeddings(rec.json, rec)
        elif path in fake.rerank_routes:
            self._rerank(rec.json, rec, path)
        else:
            self._error(404, f"Not Found: {rec.path}", "NotFoundError")

    # -- endpoints -------------------------------------------------------------------------------
    def _chat(self, req: dict, rec: Recorded) -> None:
        messages = req.get("messages")
        if not isinstance(messages, list) or not messages:
            self._error(400, "messages must be a non-empty list")
            return
        for m in messages:
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool"):
                self._error(400, f"bad message: {str(m)[:100]}")
                return
        if req.get("stream"):
            self._error(400, "the fake server does not stream")
            return
        for part in image_parts(req):
            url = (part.get("image_url") or {}).get("url", "")
            if not url.startswith("data:image/") or ";base64," not in url:
                self._error(400, "only inline data:image/...;base64 URLs are accepted (no fetching)")
                return
            try:
                base64.b64decode(url.split(",", 1)[1], validate=True)
            except ValueError:
                self._error(400, "image data is not valid base64")
                return
        text = self.fake.responder(req)
        p_tok, c_tok = len(prompt_text(req).split()) + 1, len(text.split())
        rec.usage = {"prompt_tokens": p_tok, "completion_tokens": c_tok, "images": len(image_parts(req))}
        message = {"role": "assistant", "content": text, "tool_calls": []}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop", "stop_reason": None}
        self._send(200, {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": req.get("model"), "choices": [choice],
            "usage": {"prompt_tokens": p_tok, "completion_tokens": c_tok, "total_tokens": p_tok + c_tok},
        })  # fmt: skip

    def _embeddings(self, req: dict, rec: Recorded) -> None:
        if "messages" in req and "input" not in req:  # vLLM's chat-style input of a multimodal embedder
            self._embed_messages(req, rec)
            return
        inputs = req.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not all(isinstance(t, str) for t in inputs):
            self._error(400, "input must be a string or a list of strings")
            return
        if req.get("encoding_format", "float") != "float":
            self._error(400, "the fake server only returns float embeddings")
            return
        dim = self.fake.embedding_dim
        data = [{"object": "embedding", "index": i, "embedding": self.fake.embedder(t, dim)} for i, t in enumerate(inputs)]
        tokens = sum(len(t.split()) for t in inputs)
        rec.usage = {"prompt_tokens": tokens, "completion_tokens": 0,
                     "images": sum(1 for t in inputs if t.startswith("data:image/"))}
        self._send(200, {
            "id": f"embd-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()),
            "model": req.get("model"), "data": data,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0},
        })  # fmt: skip

    def _embed_messages(self, req: dict, rec: Recorded) -> None:
        """One embedding of a `messages` request (one user message with an inline image), as vLLM
        serves a multimodal embedding model (DSE, VLM2Vec): the image's data URL goes to `image_embedder`."""
        parts = image_parts(req)
        if len(parts) != 1:
            self._error(400, f"expected one image in the messages, got {len(parts)}")
            return
        url = (parts[0].get("image_url") or {}).get("url", "")
        if not url.startswith("data:image/") or ";base64," not in url:
            self._error(400, "only inline data:image/...;base64 URLs are accepted (no fetching)")
            return
        tokens = len(prompt_text(req).split()) + 256  # a page image costs its patches
        rec.usage = {"prompt_tokens": tokens, "completion_tokens": 0, "images": 1}
        vec = self.fake.image_embedder(url, self.fake.embedding_dim)
        self._send(200, {"id": f"embd-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()),
                         "model": req.get("model"), "data": [{"object": "embedding", "index": 0, "embedding": vec}],
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0}})

    def _rerank(self, req: dict, rec: Recorded, path: str) -> None:
        """vLLM's /v1/rerank (query + documents -> results[index, relevance_score], best first, cut to
        top_n) and /v1/score (text_1 + text_2 list -> data[index, score], in input order)."""
        rerank = path == "/v1/rerank"
        query, docs = (req.get("query"), req.get("documents")) if rerank else (req.get("text_1"), req.get("text_2"))
        if isinstance(docs, str):
            docs = [docs]
        if not isinstance(query, str) or not isinstance(docs, list) or not all(isinstance(d, str) for d in docs):
            self._error(400, "query/text_1 must be a string and documents/text_2 a list of strings")
            return
        scores = [self.fake.scorer(query, d) for d in docs]
        tokens = sum(len(query.split()) + len(d.split()) for d in docs)
        rec.usage = {"prompt_tokens": tokens, "completion_tokens": 0, "images": 0}
        u = {"prompt_tokens": tokens, "total_tokens": tokens}
        if rerank:
            order = sorted(range(len(docs)), key=lambda i: -scores[i] if isinstance(scores[i], (int, float)) else 0.0)
            order = order[: req.get("top_n") or len(docs)]
            results = [{"index": i, "document": {"text": docs[i]}, "relevance_score": scores[i]} for i in order]
            self._send(200, {"id": f"rerank-{uuid.uuid4().hex}", "model": req.get("model"), "results": results, "usage": u})
        else:
            data = [{"index": i, "object": "score", "score": sc} for i, sc in enumerate(scores)]
            self._send(200, {"id": f"score-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()),
                             "model": req.get("model"), "data": data, "usage": u})
