"""Rerankers: a cross-encoder scores (question, passage) pairs, higher = more relevant.

Two ways to reach one, with the same interface (`score(query, passages) -> list[float]`, `model`,
`where`):

- `ServedReranker`: a model server's rerank API, the Jina/Cohere shape vLLM serves for
  cross-encoders (`POST {url}/rerank` → `results[].relevance_score`); a server without it (404/405)
  is asked through vLLM's `POST {url}/score` (`text_1` = the question, `text_2` = the passages →
  `data[].score`) from then on. Retries, the concurrency bound and usage accounting are the
  `LLMClient`'s, like every other request to a model server.
- `LocalCrossEncoder`: sentence-transformers' `CrossEncoder` in this process (a path on disk or a
  Hugging Face name in the local cache / hub), loaded once per process.

`mmrag.models.factory.reranker` builds the one the settings name (`MMRAG_RERANK_MODEL`,
`MMRAG_RERANK_URL`); `mmrag.retrieval.query.retrieve` applies it to the fused candidates.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Sequence

from mmrag.models import usage
from mmrag.models.llm import LLMClient, LLMError, _BadReply


class ServedReranker:
    """`model` on an OpenAI-compatible server's rerank API (vLLM `--task score` / a cross-encoder)."""

    def __init__(self, client: LLMClient, model: str):
        self.client, self.model = client, model
        self.where = client.base_url
        self._api = "rerank"  # becomes "score" when the server has no rerank route

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        passages = list(passages)
        if not passages:
            return []
        try:
            return self._ask(self._api, query, passages)
        except LLMError as e:
            if self._api != "rerank" or e.status not in (404, 405):
                raise
            self._api = "score"  # vLLM before its rerank route, or a server with /score only
            return self._ask("score", query, passages)

    def _ask(self, api: str, query: str, passages: list[str]) -> list[float]:
        import httpx

        if api == "rerank":
            body: dict[str, Any] = {"model": self.model, "query": query, "documents": passages,
                                    "top_n": len(passages)}
        else:
            body = {"model": self.model, "text_1": query, "text_2": passages}

        def send() -> list[float]:
            t0 = time.perf_counter()
            resp = self.client._client.post(f"/{api}", body=body, cast_to=httpx.Response)
            try:
                reply = resp.json()
            except ValueError:
                raise _BadReply(f"unreadable /{api} reply: {resp.text[:200]!r}") from None
            u = reply.get("usage") if isinstance(reply, dict) else None
            tokens = int((u or {}).get("prompt_tokens") or (u or {}).get("total_tokens") or 0)
            usage.record(self.model, "rerank", prompt_tokens=tokens, latency_ms=(time.perf_counter() - t0) * 1000)
            rows = reply.get("results" if api == "rerank" else "data") if isinstance(reply, dict) else None
            key = "relevance_score" if api == "rerank" else "score"
            scores: list[float | None] = [None] * len(passages)
            for r in rows or []:
                i = r.get("index") if isinstance(r, dict) else None
                if isinstance(i, int) and 0 <= i < len(passages) and isinstance(r.get(key), (int, float)):
                    scores[i] = float(r[key])
            if any(s is None for s in scores):
                raise _BadReply(f"/{api} scored {sum(s is not None for s in scores)} of {len(passages)} passages: "
                                f"{str(reply)[:200]!r}")
            return scores  # type: ignore[return-value]

        return self.client._call(f"{api} ({self.model})", send)


class LocalCrossEncoder:
    """sentence-transformers' `CrossEncoder` in this process; loaded on first use."""

    def __init__(self, model: str, device: str = "auto", batch_size: int = 32):
        self.model, self.device, self.batch_size = model, device, batch_size
        self.where = "in-process"
        self._ce = None
        self._lock = threading.Lock()

    def _load(self):
        with self._lock:
            if self._ce is None:
                from sentence_transformers import CrossEncoder

                from mmrag.models.embedders import resolve_device

                self._ce = CrossEncoder(self.model, device=resolve_device(self.device))
        return self._ce

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        passages = list(passages)
        if not passages:
            return []
        out = self._load().predict([(query, p) for p in passages], batch_size=self.batch_size,
                                   show_progress_bar=False)
        return [float(x) for x in out]
