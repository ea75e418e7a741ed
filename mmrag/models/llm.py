"""A small client for an OpenAI-compatible model server (vLLM in production), without Dagster.

One `LLMClient` serves the description stage (text model and vision model), the graph builder
(`acomplete` is LightRAG's `llm_model_func`) and, optionally, text embeddings. Every request goes
through one concurrency limit shared by threads and asyncio tasks, and is retried with exponential
backoff on transient faults only: connection errors, timeouts, 429, 5xx and unreadable replies.
Any other 4xx fails at once. When retries run out the caller gets `LLMError` with the server's
message. Only the configured server is contacted: images are read from local files and sent inline.
Every reply's usage (tokens, images, latency, model) goes to the meters of the calling context
(`mmrag.models.usage`).
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import functools
import io
import json
import mimetypes
import random
import re
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Sequence

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from mmrag.models import usage
from mmrag.redact import scrub

# Generation parameters forwarded from `chat(**kw)` / `acomplete(**kwargs)`; anything else (LightRAG's
# `hashing_kv`, `keyword_extraction`, `stream`, `_priority`, ...) is ignored.
_FORWARDED = {
    "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "seed",
    "presence_penalty", "frequency_penalty", "n", "logit_bias", "extra_body",
}
_RASTER_MIMES = {"image/png", "image/jpeg", "image/webp", "image/gif"}
_MAX_IMAGE_BYTES = 8 * 1024 * 1024
_MAX_IMAGE_SIDE = 2048


class LLMError(RuntimeError):
    """A model call that failed for good: the server's message, and whether retrying might help."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False):
        super().__init__(message)
        self.status = status
        self.retryable = retryable


_UNREADABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffe\uffff\ud800-\udfff]")


def unreadable(text: str) -> bool:
    """A reply no model writes on purpose: empty, or holding C0 control characters or noncharacters
    (a broken server, a wrong decoding). Such a reply is refused, never cached or indexed."""
    return not text.strip() or _UNREADABLE.search(text) is not None or text.count("\ufffd") > max(2, len(text) // 100)


class _BadReply(Exception):
    """The server answered 2xx with something that is not the expected JSON."""


def _is_transient(exc: BaseException) -> bool:
    import openai

    if isinstance(exc, (openai.APIConnectionError, _BadReply, json.JSONDecodeError)):
        return True  # APITimeoutError is an APIConnectionError
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code == 429 or exc.status_code >= 500
    return False


def _server_message(exc: BaseException) -> str:
    import openai

    if isinstance(exc, openai.APIStatusError):
        body = exc.body
        if isinstance(body, dict):
            err = body.get("error", body)
            msg = err.get("message") if isinstance(err, dict) else err
            if msg:
                return f"HTTP {exc.status_code}: {msg}"
        return f"HTTP {exc.status_code}: {exc.message}"
    if isinstance(exc, openai.APITimeoutError):
        return "request timed out"
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        return f"connection error: {cause or exc}"
    if isinstance(exc, json.JSONDecodeError):
        return f"malformed JSON from server: {exc}"
    return f"{type(exc).__name__}: {exc}"


def guess_image_mime(data: bytes, name: str = "") -> str:
    """Mime type from the file's magic bytes, else its suffix, else PNG."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:2] == b"BM":
        return "image/bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    head = data[:256].lstrip().lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in data[:1024].lower()):
        return "image/svg+xml"
    guessed, _ = mimetypes.guess_type(name)
    return guessed if guessed and guessed.startswith("image/") else "image/png"


def image_data_url(path: str | Path) -> str:
    """A local image as a `data:` URL. Formats a VLM may not read, and very large files, are
    re-encoded as PNG (longest side at most 2048 px) with Pillow."""
    p = Path(path)
    if not p.is_file():
        raise LLMError(f"image file not found: {p}")
    data = p.read_bytes()
    mime = guess_image_mime(data, p.name)
    if mime not in _RASTER_MIMES or len(data) > _MAX_IMAGE_BYTES:
        try:
            from PIL import Image

            with Image.open(io.BytesIO(data)) as im:
                im.load()
                im.thumbnail((_MAX_IMAGE_SIDE, _MAX_IMAGE_SIDE))
                if im.mode not in ("RGB", "RGBA", "L", "LA"):
                    im = im.convert("RGBA")
                buf = io.BytesIO()
                im.save(buf, format="PNG", optimize=True)
            data, mime = buf.getvalue(), "image/png"
        except Exception as e:  # noqa: BLE001 - any decoder failure means "cannot send this"
            raise LLMError(f"cannot encode image {p.name} ({mime}): {e}") from e
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _count_images(messages: Sequence[dict]) -> int:
    """The image_url parts of chat messages."""
    n = 0
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):
            n += sum(1 for p in content if isinstance(p, dict) and p.get("type") == "image_url")
    return n


def _note(model: str, kind: str, resp: Any, images: int, t0: float) -> None:
    """A reply came: its usage goes to the meters of the calling context (`mmrag.models.usage`), also
    when the reply is then refused (unreadable, no text): the server did the work."""
    prompt, completion = usage.reply_usage(resp)
    usage.record(model, kind, prompt_tokens=prompt, completion_tokens=completion, images=images,
                 latency_ms=(time.perf_counter() - t0) * 1000)


class LLMClient:
    """Sync + async access to one OpenAI-compatible server, bounded by `concurrency`."""

    def __init__(
        self,
        base_url: str,
        model: str,
        vlm_model: str = "",
        api_key: str = "",
        concurrency: int = 4,
        timeout_s: float = 120.0,
        retries: int = 3,
        *,
        backoff_s: float = 1.0,
        backoff_max_s: float = 30.0,
    ):
        if not base_url:
            raise ValueError("LLMClient needs a base_url")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.vlm_model = vlm_model or model
        self.concurrency = max(1, int(concurrency))
        self.timeout_s = float(timeout_s)
        self.retries = max(0, int(retries))
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        # imported here, not with the module: ~0.8 s that a process without a client skips
        from openai import OpenAI

        self._client = OpenAI(
            base_url=self.base_url, api_key=api_key or "EMPTY", timeout=self.timeout_s, max_retries=0
        )
        self._sem = threading.BoundedSemaphore(self.concurrency)
        self._lock = threading.Lock()
        self._calls = 0
        self._attempts = 0
        self._async_sems: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore]" = (
            weakref.WeakKeyDictionary()
        )
        self._executor = None  # threads of the async API's blocking calls (`achat`)

    def __repr__(self) -> str:
        return f"LLMClient({self.base_url!r}, model={self.model!r}, vlm_model={self.vlm_model!r})"

    # -- counters --------------------------------------------------------------------------------
    @property
    def calls(self) -> int:
        """Logical calls made (chat/complete/describe_image/embed batches), retries not counted."""
        with self._lock:
            return self._calls

    @property
    def attempts(self) -> int:
        """HTTP requests sent, retries included."""
        with self._lock:
            return self._attempts

    def _bump(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    # -- retry core ------------------------------------------------------------------------------
    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        resp = getattr(exc, "response", None)
        retry_after = resp.headers.get("retry-after") if resp is not None else None
        if retry_after:
            try:
                return min(float(retry_after), self.backoff_max_s)
            except ValueError:
                pass
        base = self.backoff_s * (2 ** (state.attempt_number - 1))
        return min(base, self.backoff_max_s) * (0.5 + random.random() / 2)

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run one request under the concurrency limit, retrying transient faults."""
        self._bump("_calls")

        def attempt() -> Any:
            with self._sem:
                self._bump("_attempts")
                return fn()

        retrying = Retrying(
            retry=retry_if_exception(_is_transient),
            stop=stop_after_attempt(self.retries + 1),
            wait=self._wait,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except LLMError:
            raise
        except Exception as e:  # noqa: BLE001 - every failure leaves as LLMError
            transient = _is_transient(e)
            n = self.retries + 1
            tries = f" after {n} attempt{'s' if n > 1 else ''}" if transient else ""
            raise LLMError(
                scrub(f"{what} to {self.base_url} failed{tries}: {_server_message(e)}"),
                status=getattr(e, "status_code", None),
                retryable=transient,
            ) from e

    # -- chat ------------------------------------------------------------------------------------
    def chat(self, messages: Sequence[dict], model: str | None = None, **kw: Any) -> str:
        """One non-streaming chat completion; returns the assistant message's text."""
        model = model or self.model
        params = {k: v for k, v in kw.items() if k in _FORWARDED and v is not None}
        rf = kw.get("response_format")
        if isinstance(rf, dict):  # LightRAG may pass a pydantic class; only plain dicts are sent
            params["response_format"] = rf

        images = _count_images(messages)

        def send() -> str:
            t0 = time.perf_counter()
            resp = self._client.chat.completions.create(model=model, messages=list(messages), **params)
            _note(model, "chat", resp, images, t0)
            choices = getattr(resp, "choices", None)
            if not isinstance(choices, list) or not choices:
                raise _BadReply(f"reply has no choices: {str(resp)[:200]!r}")
            msg = getattr(choices[0], "message", None)
            content = getattr(msg, "content", None)
            if isinstance(content, str) and content.strip():
                if unreadable(content):  # a broken reply: retried like a malformed one
                    raise _BadReply(f"unreadable reply (control characters): {content[:60]!r}")
                return content
            reason = getattr(choices[0], "finish_reason", None)
            raise LLMError(f"{model} returned no text (finish_reason={reason})", retryable=False)

        return self._call(f"chat completion ({model})", send)

    def complete(self, prompt: str, system: str | None = None, **kw: Any) -> str:
        messages: list[dict] = []
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": prompt})
        return self.chat(messages, **kw)

    def describe_image(self, prompt: str, image_path: str | Path, system: str | None = None, **kw: Any) -> str:
        """Ask the vision model about a local image, sent inline as a base64 data URL."""
        url = image_data_url(image_path)
        messages: list[dict] = []
        if system:
            messages.append({"role": "system", "content": system})
        messages.append(
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": prompt},
                    {"type": "image_url", "image_url": {"url": url}},
                ],
            }
        )
        return self.chat(messages, model=self.vlm_model, **kw)

    # -- embeddings ------------------------------------------------------------------------------
    def embed(self, texts: Sequence[str], model: str, batch_size: int = 64, encoding: str = "float") -> list:
        """Embeddings from the server's /embeddings, in input order. `encoding="base64"` (vLLM and the
        embedding service serve it): float32 bytes instead of JSON numbers, rows as numpy arrays."""
        out: list[list[float]] = []
        texts = list(texts)
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]

            def send(batch: list[str] = batch) -> list[list[float]]:
                t0 = time.perf_counter()
                resp = self._client.embeddings.create(model=model, input=batch, encoding_format=encoding)
                _note(model, "embed", resp, sum(1 for t in batch if t.startswith("data:image/")), t0)
                data = getattr(resp, "data", None)
                if not isinstance(data, list) or len(data) != len(batch):
                    raise _BadReply(f"expected {len(batch)} embeddings, got {str(data)[:200]!r}")
                rows = sorted(data, key=lambda d: d.index)
                if encoding == "base64":
                    import base64

                    import numpy as np

                    try:
                        return [np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in rows]
                    except (TypeError, ValueError) as e:
                        raise _BadReply(f"unreadable base64 embedding: {e}") from None
                return [list(map(float, d.embedding)) for d in rows]

            out.extend(self._call(f"embeddings ({model})", send))
        return out

    def model_info(self) -> dict[str, dict]:
        """The server's `/models` listing, each model's whole record by id (a server may add fields:
        the embedding service says each model's `dim` and why it is off)."""

        def send() -> dict[str, dict]:
            data = getattr(self._client.models.list(), "data", None)
            if not isinstance(data, list):
                raise _BadReply(f"unexpected /models reply: {str(data)[:200]!r}")
            return {m.id: m.model_dump() for m in data}

        return self._call("model listing", send)

    def list_models(self) -> list[str]:
        """Model ids the server serves (vLLM: the one `--served-model-name`)."""
        return list(self.model_info())

    # -- asyncio (LightRAG) ----------------------------------------------------------------------
    def _async_sem(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        with self._lock:
            sem = self._async_sems.get(loop)
            if sem is None:
                sem = self._async_sems[loop] = asyncio.Semaphore(self.concurrency)
            return sem

    def _threads(self):
        """The async API's own `concurrency` threads. Not the event loop's default pool (6 threads on
        2 cores): there, LightRAG's embedding calls took threads too, and the requests in flight
        fell below the budget."""
        with self._lock:
            if self._executor is None:
                from concurrent.futures import ThreadPoolExecutor

                self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="mmrag-llm")
            return self._executor

    async def achat(self, messages: Sequence[dict], model: str | None = None, **kw: Any) -> str:
        async with self._async_sem():  # keeps waiting tasks out of the thread pool
            call = functools.partial(contextvars.copy_context().run, self.chat, messages, model, **kw)
            return await asyncio.get_running_loop().run_in_executor(self._threads(), call)

    async def acomplete(
        self,
        prompt: str,
        system_prompt: str | None = None,
        history_messages: Sequence[dict] | None = None,
        **kwargs: Any,
    ) -> str:
        """LightRAG's `llm_model_func`: `await f(prompt, system_prompt=..., history_messages=[...])`."""
        messages: list[dict] = []
        if system_prompt:
            messages.append({"role": "system", "content": system_prompt})
        messages.extend(m for m in (history_messages or []) if m.get("content"))
        messages.append({"role": "user", "content": prompt})
        kw = {k: v for k, v in kwargs.items() if k in _FORWARDED or k == "response_format"}
        return await self.achat(messages, **kw)

    def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)
        self._client.close()

    def __enter__(self) -> "LLMClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
