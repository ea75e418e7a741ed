"""Embedding models, loaded once per process (module-level caches in mmrag.embedders)."""

from __future__ import annotations

from functools import lru_cache
from typing import Optional

from dagster import ConfigurableResource

from mmrag.embedders import ImageEmbedder, TextEmbedder
from mmrag_resources._settings import resolved


class TextEmbedderResource(ConfigurableResource):
    """sentence-transformers model name/path (default: the PyPI-packaged all-MiniLM-L6-v2), or
    backend="openai" to use the LLM server's /embeddings. Chunking is configured here because chunk
    size is bounded by what the text model reads (MiniLM: 256 word pieces)."""

    model: Optional[str] = None
    backend: Optional[str] = None
    chunk_size: Optional[int] = None
    chunk_overlap: Optional[int] = None

    def settings(self):
        return resolved(text_embed_model=self.model, text_embed_backend=self.backend,
                        chunk_size=self.chunk_size, chunk_overlap=self.chunk_overlap)

    def embedder(self, llm=None, cached: bool = True):
        """The text embedder; `cached`: behind the vector cache of this data dir (`mmrag.vector_cache`),
        so a text seen by an earlier run or file is not embedded again."""
        s = self.settings()
        if s.text_embed_backend == "openai":
            if llm is None:
                raise ValueError("MMRAG_TEXT_EMBED_BACKEND=openai needs the LLM server (MMRAG_LLM_URL)")
            inner = TextEmbedder(s.text_embed_model, "openai", remote_embed=lambda t: llm.embed(t, s.text_embed_model))
            space = f"openai:{llm.base_url}:{s.text_embed_model}"
        else:
            inner, space = _text_embedder(s.text_embed_model), f"st:{s.text_embed_model}"
        if not cached:
            return inner
        from mmrag.vector_cache import CachedTextEmbedder, VectorCache
        return CachedTextEmbedder(inner, VectorCache(s.cache_dir / "vectors.sqlite"), space)


@lru_cache(maxsize=4)
def _text_embedder(model: str) -> TextEmbedder:
    return TextEmbedder(model)


class ImageEmbedderResource(ConfigurableResource):
    """open_clip model + pretrained tag. pretrained="off" disables image embedding; "random" builds
    random weights (tests only). Missing weights turn image embedding off with a warning."""

    model: Optional[str] = None
    pretrained: Optional[str] = None

    def embedder(self, cached: bool = True):
        """The image embedder; `cached`: behind the vector cache of this data dir, keyed by the
        picture's bytes (`mmrag.vector_cache`)."""
        s = resolved(clip_model=self.model, clip_pretrained=self.pretrained)
        inner = _image_embedder(s.clip_model, s.clip_pretrained, str(s.cache_dir))
        if not cached or not inner.enabled:
            return inner
        from mmrag.vector_cache import CachedImageEmbedder, VectorCache
        return CachedImageEmbedder(inner, VectorCache(s.cache_dir / "vectors.sqlite"), f"clip:{s.clip_model}/{s.clip_pretrained}")


@lru_cache(maxsize=4)
def _image_embedder(model: str, pretrained: str, cache_dir: str) -> ImageEmbedder:
    from pathlib import Path

    return ImageEmbedder(model, pretrained, cache_dir=Path(cache_dir))
