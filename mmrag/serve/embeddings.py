"""The warm embedding service (`mmrag embed-server`; `mmrag up` runs one): the configuration's text
model (sentence-transformers) and CLIP (open_clip) loaded once, served over an OpenAI-compatible
`/v1/embeddings`, so runs, the query API, the chat page and `mmrag eval` are thin clients of one warm
copy (`MMRAG_EMBED_SERVICE_URL`; `mmrag.models.factory` builds the clients).

- `GET /v1/models`: the models served, each with its vector size (`dim`) and, for CLIP, why it is off
  when its weights could not be loaded (`disabled_reason`).
- `POST /v1/embeddings`: `{"model", "input": str | [str], "encoding_format": "float" | "base64"}` as
  OpenAI's (base64: the float32 bytes; mmrag's clients ask for it). For the CLIP model an input
  is a text for its text tower, or a picture as a `data:image/...;base64,...` URI for its image tower
  (the convention of infinity-emb and vLLM's multimodal embeddings). Nothing is ever fetched: any
  other URL is refused.
- `GET /health`.

Why not a packaged server: infinity-emb 0.0.78 (the newest) pins numpy<2, sentence-transformers<4,
click<8.2, typer<0.13 and uvicorn<0.33, which Dagster and this project's stack are past, and serves
CLIP only through transformers' AutoModel, not open_clip; vLLM needs a GPU for these models here. The
service is FastAPI + uvicorn (both already serve the query API) around the same embedder classes the
in-process path runs, so the vectors are the same whichever path computed them.
"""

from __future__ import annotations

import base64
import binascii
import io
import threading
import time
from typing import Any

import numpy as np
from pydantic import BaseModel

from mmrag.config import Settings

DATA_URI = "data:image/"
MAX_INPUTS = 2048  # per request, as OpenAI's API


def clip_name(settings: Settings) -> str:
    """The CLIP model's name on the service: `<open_clip model>/<pretrained tag>`."""
    return f"{settings.clip_model}/{settings.clip_pretrained}"


class Models:
    """The served models, loaded at start (`load`), each used by one request at a time."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.text = None
        self.clip = None
        self._locks = {"text": threading.Lock(), "clip": threading.Lock()}

    def load(self) -> None:
        from mmrag.models.embedders import ImageEmbedder, TextEmbedder

        s = self.settings
        if s.text_embed_backend == "sentence-transformers":
            self.text = TextEmbedder(s.text_embed_model, device=s.embed_device)
            self.text.embed(["warm up"])  # loads the weights before the port opens
        self.clip = ImageEmbedder(s.clip_model, s.clip_pretrained, cache_dir=s.cache_dir, device=s.embed_device)
        if self.clip.enabled:
            self.clip.embed_texts(["warm up"])

    def listing(self) -> list[dict[str, Any]]:
        out = []
        if self.text is not None:
            out.append({"id": self.settings.text_embed_model, "object": "model", "owned_by": "mmrag",
                        "dim": self.text.dim, "kind": "text", "device": str(self.text._load().device)})
        if self.clip is not None:
            on = self.clip.enabled
            out.append({"id": clip_name(self.settings), "object": "model", "owned_by": "mmrag", "kind": "clip",
                        "dim": self.clip.dim if on else None, "disabled_reason": None if on else self.clip.disabled_reason,
                        "random_weights": self.clip.random_weights,
                        "device": str(next(self.clip._bundle[0].parameters()).device) if on else None})
        return out

    def embed(self, model: str, inputs: list[str]) -> np.ndarray:
        if self.text is not None and model == self.settings.text_embed_model:
            with self._locks["text"]:
                return self.text.embed(inputs)
        if self.clip is not None and model == clip_name(self.settings):
            if not self.clip.enabled:
                raise LookupError(f"{model} is off: {self.clip.disabled_reason}")
            return self._clip(inputs)
        raise LookupError(f"model {model!r} is not served here; see GET /v1/models")

    def _clip(self, inputs: list[str]) -> np.ndarray:
        from PIL import Image

        images = [i for i, x in enumerate(inputs) if x.startswith(DATA_URI)]
        texts = [i for i, x in enumerate(inputs) if not x.startswith(DATA_URI)]
        if any("://" in inputs[i] for i in texts):
            raise ValueError("inputs are texts or data:image/... URIs; URLs are never fetched")
        out = np.zeros((len(inputs), self.clip.dim), dtype=np.float32)
        with self._locks["clip"]:
            if texts:
                out[texts] = self.clip.embed_texts([inputs[i] for i in texts])
            if images:
                pics = []
                for i in images:
                    try:
                        raw = base64.b64decode(inputs[i].split(",", 1)[1], validate=True)
                        pics.append(Image.open(io.BytesIO(raw)))
                    except (IndexError, binascii.Error, OSError) as e:
                        raise ValueError(f"input {i} is not a readable picture: {e}") from None
                out[images] = self.clip.embed_pictures(pics)
        return out


class EmbeddingRequest(BaseModel):
    model: str
    input: str | list[str]
    encoding_format: str = "float"


def _encode(vec: np.ndarray, encoding: str):
    """A vector as OpenAI's API sends it: JSON numbers, or base64 of its little-endian float32 bytes."""
    if encoding == "base64":
        return base64.b64encode(np.asarray(vec, dtype="<f4").tobytes()).decode("ascii")
    return vec.tolist()


def create_app(settings: Settings, models: Models | None = None):
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    models = models or Models(settings)

    @asynccontextmanager
    async def lifespan(_app):
        models.load()  # uvicorn opens the port after this: listening = warm
        yield

    app = FastAPI(title="mmrag embeddings", lifespan=lifespan)

    def error(status: int, message: str, etype: str) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": etype, "code": status}}, status_code=status)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    def list_models() -> dict:
        return {"object": "list", "data": models.listing()}

    @app.post("/v1/embeddings")
    def embeddings(req: EmbeddingRequest):
        inputs = [req.input] if isinstance(req.input, str) else list(req.input)
        if not inputs or len(inputs) > MAX_INPUTS:
            return error(400, f"input holds 1 to {MAX_INPUTS} items", "BadRequestError")
        if req.encoding_format not in ("float", "base64"):
            return error(400, "encoding_format is float or base64", "BadRequestError")
        try:
            vecs = models.embed(req.model, inputs)
        except LookupError as e:
            return error(404, str(e), "NotFoundError")
        except ValueError as e:
            return error(400, str(e), "BadRequestError")
        tokens = sum(len(x.split()) for x in inputs if not x.startswith(DATA_URI))
        return {"object": "list", "model": req.model, "created": int(time.time()),
                "data": [{"object": "embedding", "index": i, "embedding": _encode(v, req.encoding_format)}
                         for i, v in enumerate(vecs)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    return app
