"""Retrieval over the Milvus collections: text by the text embedder, images by CLIP's text tower.

Each hit carries its lineage: file (relative to its source root), source, page, bbox or time range,
modality, parser and pipeline version. Text search is hybrid: MiniLM vectors and Milvus's BM25 full-text index, fused by RRF. (Graph
modes and answers come with issue 4.)
"""

from __future__ import annotations

from mmrag.config import Settings
from mmrag.milvus_store import IMAGE, TEXT, MilvusStore, quote


def _hit(h: dict) -> dict:
    source, _, rel = h["file_key"].partition(":")
    page = h.get("page", -1)
    out = {
        "file": rel, "source": source, "page": None if page is None or page < 0 else int(page),
        "modality": h.get("modality", "text"), "text": h.get("text", ""), "score": round(float(h["score"]), 6),
        "bbox": (h.get("lineage") or {}).get("bbox"), "parser": h.get("parser", ""),
        "pipeline_version": h.get("pipeline_version", ""), "id": h["id"],
    }
    if h.get("t_start", -1) >= 0:
        out["t_start"], out["t_end"] = h["t_start"], h["t_end"]
    if h.get("image_path"):
        out["image_path"] = h["image_path"]
    return out


def search(settings: Settings, text: str, top_k: int = 5, source: str | None = None,
           text_embedder=None, image_embedder=None, with_images: bool = True, hybrid: bool = True) -> list[dict]:
    """Top-k text hits (dense + BM25 fused by RRF, or dense only), then up to 3 image hits."""
    from mmrag.embedders import ImageEmbedder, TextEmbedder

    store = MilvusStore(settings.resolved_milvus_uri, settings.milvus_token, settings.milvus_db,
                        settings.collection_prefix)
    flt = f"source == {quote(source)}" if source else ""
    text_embedder = text_embedder or TextEmbedder(settings.text_embed_model)
    vec = text_embedder.embed([text])[0].tolist()
    hits = [_hit(h) for h in (store.hybrid_search(vec, text, top_k, flt) if hybrid else store.search(TEXT, vec, top_k, flt))]
    if with_images and store.has(IMAGE):
        image_embedder = image_embedder or ImageEmbedder(settings.clip_model, settings.clip_pretrained,
                                                         cache_dir=settings.cache_dir)
        if image_embedder.enabled:
            # CLIP scores live on another scale than the text model's: image hits are listed after
            # the text hits rather than merged by score.
            ivec = image_embedder.embed_texts([text])[0].tolist()
            hits += [_hit(h) for h in store.search(IMAGE, ivec, min(top_k, 3), flt)]
    return hits
