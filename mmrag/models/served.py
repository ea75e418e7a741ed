"""Clients of the warm embedding service (`mmrag.serve.embeddings`, `MMRAG_EMBED_SERVICE_URL`): the
configuration's text model and CLIP, computed in the service's process instead of this one. They
have the interface of the in-process embedders (`mmrag.models.embedders`), import no torch, and
produce the same vectors (the service runs those same classes), so the vector cache and the config
fingerprint do not tell the two paths apart. A service that cannot be reached raises `LLMError`
(retryable): the stages record the file as failed transiently, to be retried after its backoff."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from mmrag.models.embedders import TextEmbedder
from mmrag.models.llm import LLMClient, guess_image_mime


def served_text_embedder(client: LLMClient, model: str, encoding: str = "float") -> TextEmbedder:
    """`model` on a server's /v1/embeddings (the embedding service, or vLLM serving an embedding model)
    as a TextEmbedder. `encoding="base64"` where the server serves it (the embedding service does):
    float32 bytes instead of JSON numbers, several times cheaper to encode and parse."""
    return TextEmbedder(model, "openai", remote_embed=lambda texts: client.embed(texts, model, encoding=encoding))


class ServedImageEmbedder:
    """CLIP on the service (model `<open_clip model>/<pretrained>`): `enabled`, `disabled_reason`,
    `dim` and `random_weights` as the service reports them; pictures go as data URIs."""

    served = True  # its usage is counted (`mmrag.models.usage`)

    def __init__(self, client: LLMClient, model_name: str, pretrained: str, batch_size: int = 16):
        self.client, self.model_name, self.pretrained = client, model_name, pretrained
        self.model = f"{model_name}/{pretrained}"
        self.batch_size = batch_size
        self.seconds = 0.0
        self._info: dict | None = None

    def _described(self) -> dict:
        if self._info is None:
            info = self.client.model_info().get(self.model)  # raises while the service is unreachable
            if info is None:
                info = {"disabled_reason": f"the embedding service at {self.client.base_url} does not serve {self.model}"}
            self._info = info
        return self._info

    @property
    def disabled_reason(self) -> str | None:
        return self._described().get("disabled_reason")

    @property
    def enabled(self) -> bool:
        return self.disabled_reason is None

    @property
    def random_weights(self) -> bool:
        return bool(self._described().get("random_weights"))

    @property
    def dim(self) -> int:
        if not self.enabled:
            raise RuntimeError(self.disabled_reason)
        return int(self._described()["dim"])

    def _vectors(self, inputs: list[str]) -> np.ndarray:
        t0 = time.perf_counter()
        vecs = np.asarray(self.client.embed(inputs, self.model, batch_size=self.batch_size, encoding="base64"),
                          dtype=np.float32)
        self.seconds += time.perf_counter() - t0
        return vecs.reshape(len(inputs), -1) if inputs else np.zeros((0, self.dim), dtype=np.float32)

    def embed_images(self, paths: Sequence[str]) -> np.ndarray:
        uris = []
        for p in paths:
            data = Path(p).read_bytes()
            uris.append(f"data:{guess_image_mime(data)};base64,{base64.b64encode(data).decode('ascii')}")
        return self._vectors(uris)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self._vectors(list(texts))
