"""Embedding models: the text embedder (in-process or a server's /v1/embeddings) and CLIP, built by
`mmrag.models.factory` (once per process)."""

from __future__ import annotations

from typing import Optional

from dagster import ConfigurableResource

from mmrag.models import factory
from mmrag_resources._settings import resolved


class TextEmbedderResource(ConfigurableResource):
    """sentence-transformers model name/path (default: the PyPI-packaged all-MiniLM-L6-v2), or
    backend="openai": the /v1/embeddings of `url` (MMRAG_TEXT_EMBED_URL; default the LLM server), as
    vLLM serves an embedding model. Chunking is configured here because chunk size is bounded by what
    the text model reads (MiniLM: 256 word pieces)."""

    model: Optional[str] = None
    backend: Optional[str] = None
    url: Optional[str] = None
    chunk_size: Optional[int] = None
    chunk_overlap: Optional[int] = None

    def settings(self):
        return resolved(text_embed_model=self.model, text_embed_backend=self.backend, text_embed_url=self.url,
                        chunk_size=self.chunk_size, chunk_overlap=self.chunk_overlap)

    def embedder(self, llm=None, cached: bool = True):
        """The text embedder; `llm`: the run's LLM client (its server embeds when no embedding URL is
        set); `cached`: behind the vector cache of this data dir (`mmrag.models.vector_cache`)."""
        return factory.text_embedder(self.settings(), llm=llm, cached=cached)


class ImageEmbedderResource(ConfigurableResource):
    """open_clip model + pretrained tag. pretrained="off" disables image embedding; "random" builds
    random weights (tests only). Missing weights turn image embedding off with a warning."""

    model: Optional[str] = None
    pretrained: Optional[str] = None

    def embedder(self, cached: bool = True):
        """The image embedder; `cached`: behind the vector cache of this data dir, keyed by the
        picture's bytes (`mmrag.models.vector_cache`)."""
        return factory.image_embedder(resolved(clip_model=self.model, clip_pretrained=self.pretrained), cached=cached)
