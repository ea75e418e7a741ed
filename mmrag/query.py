"""Retrieval: the one function behind `mmrag query`, the chat page and the evaluation.

Text hits: MiniLM vectors and Milvus's BM25 full-text index fused by RRF ("hybrid", the default), or
either alone. Image hits: CLIP's text tower over the image collection (figures, pictures, video
frames), listed after the text hits. Graph context: LightRAG's modes local / global / hybrid / mix
(naive = no graph, vector + BM25 chunks only). Filters: sources, files, modalities.

Each hit carries its lineage: file (relative to its source root), source, page, bbox or time range,
modality, parser and pipeline version.
"""

from __future__ import annotations

import time

from mmrag.config import Settings
from mmrag.milvus_store import IMAGE, TEXT, MilvusStore, quote

MODES = ("naive", "local", "global", "hybrid", "mix")
TEXT_SEARCH = ("hybrid", "dense", "bm25")
MODALITIES = ("text", "table", "image", "equation", "transcript")


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


def _in(field: str, values) -> str:
    return f"{field} in [{', '.join(quote(v) for v in values)}]"


def file_keys(settings: Settings, files, sources=None) -> list[str]:
    """`files` as file keys: "source:rel/path" stays; a bare relative path matches it in every known
    source (or in `sources`)."""
    from mmrag.state import Manifest

    known = sources or sorted(Manifest(settings.state_path).sources())
    out: list[str] = []
    for f in files:
        src, sep, _ = f.partition(":")
        out += [f] if sep and src in known else [f"{s}:{f}" for s in known]
    return out


def build_filter(settings: Settings, sources=None, files=None, modalities=None) -> str:
    parts = []
    if sources:
        parts.append(_in("source", sources))
    if files:
        parts.append(_in("file_key", file_keys(settings, files, sources)))
    if modalities:
        parts.append(_in("modality", modalities))
    return " and ".join(parts)


def open_store(settings: Settings) -> MilvusStore:
    return MilvusStore(settings.resolved_milvus_uri, settings.milvus_token, settings.milvus_db, settings.collection_prefix)


def open_graph(settings: Settings, text_embedder, llm=None):
    """The LightRAG graph of this index, for reading (its stores load from disk on first use)."""
    from mmrag.graph import GraphStore
    from mmrag.state import Manifest

    return GraphStore(settings.graph_dir, settings.resolved_milvus_uri, settings.milvus_token, settings.milvus_db,
                      embed_fn=text_embedder.embed, embed_dim=text_embedder.dim, llm=llm,
                      manifest=Manifest(settings.state_path), namespace=f"{settings.collection_prefix}_graph")


def retrieve(settings: Settings, question: str, *, top_k: int = 5, mode: str = "naive", sources=None, files=None,
             modalities=None, text_search: str = "hybrid", with_images: bool = True, image_k: int = 3,
             text_embedder=None, image_embedder=None, graph=None, store: MilvusStore | None = None) -> dict:
    """{"hits": [...], "graph_context": str, "mode", "timings_ms": {...}}: top-k text hits, then up to
    `image_k` image hits (when "image" is among `modalities` or no modality filter is set), then the
    graph context of `mode`. `graph`: an open GraphStore to reuse (else one is opened if needed)."""
    from mmrag.embedders import ImageEmbedder, TextEmbedder

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    if text_search not in TEXT_SEARCH:
        raise ValueError(f"text_search must be one of {TEXT_SEARCH}")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    store = store or open_store(settings)
    text_embedder = text_embedder or TextEmbedder(settings.text_embed_model)
    text_modalities = [m for m in (modalities or []) if m != IMAGE]
    flt = build_filter(settings, sources, files, text_modalities)
    hits: list[dict] = []
    if not modalities or text_modalities:
        if text_search == "bm25":
            raw = store.bm25_search(question, top_k, flt)
        else:
            vec = text_embedder.embed([question])[0].tolist()
            raw = store.hybrid_search(vec, question, top_k, flt) if text_search == "hybrid" else store.search(TEXT, vec, top_k, flt)
        hits = [_hit(h) for h in raw]
    timings["text"] = (time.perf_counter() - t0) * 1000
    if with_images and image_k > 0 and (not modalities or IMAGE in modalities) and store.has(IMAGE):
        t1 = time.perf_counter()
        image_embedder = image_embedder or ImageEmbedder(settings.clip_model, settings.clip_pretrained,
                                                         cache_dir=settings.cache_dir)
        if image_embedder.enabled:
            # CLIP scores live on another scale than the text model's: image hits are listed after
            # the text hits rather than merged by score.
            ivec = image_embedder.embed_texts([question])[0].tolist()
            hits += [_hit(h) for h in store.search(IMAGE, ivec, image_k, build_filter(settings, sources, files))]
        timings["images"] = (time.perf_counter() - t1) * 1000
    context = ""
    if mode != "naive":
        t2 = time.perf_counter()
        if graph is None:
            from mmrag.llm import LLMClient

            graph = open_graph(settings, text_embedder, LLMClient.from_settings(settings))
        context = graph.query_context(question, mode=mode, top_k=max(top_k, 10))
        timings["graph"] = (time.perf_counter() - t2) * 1000
    return {"hits": hits, "graph_context": context, "mode": mode,
            "timings_ms": {k: round(v, 1) for k, v in timings.items()}}


def search(settings: Settings, text: str, top_k: int = 5, source: str | None = None, **kw) -> list[dict]:
    """Hits only (no graph): `retrieve` in naive mode."""
    return retrieve(settings, text, top_k=top_k, sources=[source] if source else None, **kw)["hits"]
