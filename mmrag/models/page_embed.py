"""Visual page retrieval: PDF pages rendered to images and embedded whole by a multimodal embedding
model on the model server (DSE / VLM2Vec / jina-embeddings-v4-style: one vector per page image, the
question embedded by the same model), so a page is found by what it shows (a chart, a layout, a
logo), not only by its extracted text. Off unless `MMRAG_PAGE_EMBED_MODEL` names the model.

The requests are vLLM's: `POST {url}/embeddings` with `messages` (one user message holding the page
as an `image_url` data URL) for a page, and with `input` (the question) for a query. Pages are
rendered with pypdfium2 at `MMRAG_PAGE_DPI` (96) and sent as PNG; nothing is fetched and nothing
is kept on disk but the vectors (Milvus collection `{prefix}_page`). ColPali/ColQwen's
multi-vector late interaction needs a multi-vector store and MaxSim scoring; this path holds one
vector per page.
"""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from mmrag.models import usage
from mmrag.models.llm import LLMClient, _BadReply

PAGE_PROMPT = "What is shown on this page?"


def render_pages(pdf: Path, dpi: int = 96, max_pages: int = 10_000) -> list[tuple[int, bytes]]:
    """(0-based page index, PNG bytes) of each page of `pdf`, `max_pages` at most."""
    import pypdfium2

    doc = pypdfium2.PdfDocument(str(pdf))
    try:
        out = []
        for i in range(min(len(doc), max_pages)):
            page = doc[i]
            image = page.render(scale=dpi / 72).to_pil()
            buf = io.BytesIO()
            image.save(buf, format="PNG", optimize=False)
            out.append((i, buf.getvalue()))
            page.close()
        return out
    finally:
        doc.close()


class ServedPageEmbedder:
    """`model` on a server's /embeddings: page images through `messages`, questions through `input`."""

    served = True

    def __init__(self, client: LLMClient, model: str):
        self.client, self.model = client, model
        self.where = client.base_url

    def _post(self, body: dict, images: int) -> list[np.ndarray]:
        import httpx

        def send() -> list[np.ndarray]:
            t0 = time.perf_counter()
            resp = self.client._client.post("/embeddings", body=body, cast_to=httpx.Response)
            try:
                reply = resp.json()
            except ValueError:
                raise _BadReply(f"unreadable /embeddings reply: {resp.text[:200]!r}") from None
            u = (reply.get("usage") if isinstance(reply, dict) else None) or {}
            usage.record(self.model, "embed", prompt_tokens=int(u.get("prompt_tokens") or 0), images=images,
                         latency_ms=(time.perf_counter() - t0) * 1000)
            data = reply.get("data") if isinstance(reply, dict) else None
            if not isinstance(data, list) or not data:
                raise _BadReply(f"no embeddings in the reply: {str(reply)[:200]!r}")
            try:
                return [np.asarray(d["embedding"], dtype=np.float32) for d in sorted(data, key=lambda d: d["index"])]
            except (KeyError, TypeError, ValueError) as e:
                raise _BadReply(f"unreadable embedding: {e}") from None

        return self.client._call(f"page embeddings ({self.model})", send)

    def embed_pages(self, pngs: Sequence[bytes]) -> np.ndarray:
        """One vector per page image (one request each: a `messages` request embeds one input)."""
        out = []
        for png in pngs:
            url = f"data:image/png;base64,{base64.b64encode(png).decode('ascii')}"
            content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": PAGE_PROMPT}]
            out += self._post({"model": self.model, "messages": [{"role": "user", "content": content}],
                               "encoding_format": "float"}, images=1)
        return np.vstack(out) if out else np.zeros((0, 0), dtype=np.float32)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        vecs = self._post({"model": self.model, "input": list(texts), "encoding_format": "float"}, images=0)
        if len(vecs) != len(texts):
            raise _BadReply(f"expected {len(texts)} embeddings, got {len(vecs)}")
        return np.vstack(vecs)
