"""The one place that builds each model and store from `Settings`, for every caller.

The Dagster resources, the query service (CLI and API), the chat page, the evaluation and the CLI's
own commands all come here, so a setting means the same thing on every path: with
`MMRAG_TEXT_EMBED_BACKEND=openai`, a question is embedded by the same server and model as the
indexed chunks, whichever path asks it.

Everything is built once per process and configuration (models are big, clients hold connection
pools, LightRAG allows one open store per workspace) and shared by threads.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmrag.config import Settings, is_lite_uri

if TYPE_CHECKING:
    from mmrag.graph.store import GraphStore
    from mmrag.index.milvus_store import MilvusStore
    from mmrag.manifest import Manifest
    from mmrag.models.llm import LLMClient

log = logging.getLogger(__name__)
_guard = threading.RLock()
_llms: dict[tuple, Any] = {}
_embedders: dict[tuple, Any] = {}
_ensured: set[tuple] = set()
_graphs: dict[tuple, Any] = {}


# -- the model server ------------------------------------------------------------------------------
def llm_client(settings: Settings) -> "LLMClient | None":
    """The client of the chat / vision server (`MMRAG_LLM_URL`), or None when none is configured.
    With no model named, the one the server lists is used (vLLM serves one model per server); when
    the server cannot be asked yet, the client is built without a name and asked again next time."""
    if not settings.llm_url:
        return None
    return _client(settings.llm_url, settings.llm_model, settings.vlm_model, settings.llm_api_key, settings)


def _client(url: str, model: str, vlm_model: str, api_key: str, s: Settings) -> "LLMClient":
    from mmrag.models.llm import LLMClient

    key = (url, model, vlm_model, api_key, s.llm_concurrency, s.llm_timeout_s, s.llm_retries)
    with _guard:
        if key in _llms:
            return _llms[key]
    name = model
    if not name:
        probe = LLMClient(url, "probe", api_key=api_key, timeout_s=s.llm_timeout_s, retries=s.llm_retries)
        try:
            name = probe._client.models.list().data[0].id
        except Exception as e:  # noqa: BLE001 - the server is down or lists nothing: the request will say
            log.warning("could not ask %s which model it serves (%s: %s)", url, type(e).__name__, e)
            return LLMClient(url, "", vlm_model, api_key, s.llm_concurrency, s.llm_timeout_s, s.llm_retries)
    client = LLMClient(url, name, vlm_model, api_key, s.llm_concurrency, s.llm_timeout_s, s.llm_retries)
    with _guard:
        return _llms.setdefault(key, client)


# -- embedders -------------------------------------------------------------------------------------
def text_embed_url(settings: Settings, llm: Any = None) -> str:
    """Where `backend=openai` embeddings come from: MMRAG_TEXT_EMBED_URL, else the LLM server."""
    return settings.text_embed_url or (getattr(llm, "base_url", "") or settings.llm_url)


def text_embedder(settings: Settings, *, llm: Any = None, cached: bool = True):
    """The text embedder of the index: sentence-transformers in this process (default: the
    PyPI-packaged MiniLM), or `backend="openai"`: the `/v1/embeddings` of MMRAG_TEXT_EMBED_URL (else of
    the LLM server, or of `llm`'s). `cached`: behind the vector cache of the data dir
    (`mmrag.models.vector_cache`), so a text embedded before is not embedded again; queries pass
    False (their texts are not worth keeping)."""
    from mmrag.models.embedders import TextEmbedder

    s = settings
    if s.text_embed_backend == "openai":
        url = text_embed_url(s, llm)
        if not url:
            raise ValueError("MMRAG_TEXT_EMBED_BACKEND=openai needs a server: set MMRAG_TEXT_EMBED_URL or MMRAG_LLM_URL")
        api_key = s.text_embed_api_key or s.llm_api_key
        key = ("openai", url, s.text_embed_model, api_key, s.llm_timeout_s, s.llm_retries)
        with _guard:
            inner = _embedders.get(key)
            if inner is None:
                from mmrag.models.served import served_text_embedder

                inner = _embedders[key] = served_text_embedder(_server(url, s.text_embed_model, api_key, s),
                                                               s.text_embed_model)
        space = f"openai:{url.rstrip('/')}:{s.text_embed_model}"
    elif s.text_embed_backend == "sentence-transformers":
        key = ("st", s.text_embed_model, s.embed_service_url, s.embed_device)
        with _guard:
            inner = _embedders.get(key)
            if inner is None and s.embed_service_url:  # the same model, warm in the embedding service
                from mmrag.models.served import served_text_embedder

                inner = _embedders[key] = served_text_embedder(_service(s), s.text_embed_model, encoding="base64")
            elif inner is None:
                inner = _embedders[key] = TextEmbedder(s.text_embed_model, device=s.embed_device)
        space = f"st:{s.text_embed_model}"  # the same vectors on either path
    else:
        raise ValueError(f"unknown text embedding backend {s.text_embed_backend!r}: sentence-transformers or openai")
    if not cached:
        return inner
    from mmrag.models.vector_cache import CachedTextEmbedder, VectorCache

    return CachedTextEmbedder(inner, VectorCache(s.cache_dir / "vectors.sqlite"), space)


def image_embedder(settings: Settings, *, cached: bool = True):
    """CLIP (open_clip): image and text towers. Off, with the reason, when its weights cannot be
    loaded or `clip_pretrained="off"`; `cached`: pictures behind the vector cache, keyed by their bytes."""
    from mmrag.models.embedders import ImageEmbedder

    s = settings
    key = ("clip", s.clip_model, s.clip_pretrained, str(s.cache_dir), s.embed_service_url, s.embed_device)
    with _guard:
        inner = _embedders.get(key)
        if inner is None and s.embed_service_url and s.clip_pretrained != "off":
            from mmrag.models.served import ServedImageEmbedder

            inner = _embedders[key] = ServedImageEmbedder(_service(s), s.clip_model, s.clip_pretrained)
        elif inner is None:
            inner = _embedders[key] = ImageEmbedder(s.clip_model, s.clip_pretrained, cache_dir=Path(s.cache_dir),
                                                    device=s.embed_device)
    # (a served CLIP is asked whether it is on when a picture needs it: the service may not be up yet)
    if not cached or (not s.embed_service_url and not inner.enabled):
        return inner
    from mmrag.models.vector_cache import CachedImageEmbedder, VectorCache

    return CachedImageEmbedder(inner, VectorCache(s.cache_dir / "vectors.sqlite"), f"clip:{s.clip_model}/{s.clip_pretrained}")


def reranker(settings: Settings):
    """The cross-encoder of `MMRAG_RERANK_MODEL`, or None (off, the default): on the server of
    `MMRAG_RERANK_URL` (its /rerank, else /score), else sentence-transformers' CrossEncoder in this
    process (loaded on first use, once per process)."""
    s = settings
    if not s.rerank_model:
        return None
    from mmrag.models.rerank import LocalCrossEncoder, ServedReranker

    api_key = s.rerank_api_key or s.llm_api_key
    key = ("rerank", s.rerank_model, s.rerank_url, api_key, s.embed_device, s.llm_timeout_s, s.llm_retries)
    with _guard:
        model = _embedders.get(key)
        if model is None and s.rerank_url:
            model = _embedders[key] = ServedReranker(_server(s.rerank_url, s.rerank_model, api_key, s), s.rerank_model)
        elif model is None:
            model = _embedders[key] = LocalCrossEncoder(s.rerank_model, device=s.embed_device)
        return model


def page_embedder(settings: Settings):
    """The multimodal page embedder of `MMRAG_PAGE_EMBED_MODEL` on its server (MMRAG_PAGE_EMBED_URL,
    else the text embedding server, else the LLM server), or None (off, the default)."""
    s = settings
    if not s.page_embed_model:
        return None
    url = s.page_embed_url or s.text_embed_url or s.llm_url
    if not url:
        raise ValueError("MMRAG_PAGE_EMBED_MODEL needs a server: set MMRAG_PAGE_EMBED_URL (or MMRAG_LLM_URL)")
    from mmrag.models.page_embed import ServedPageEmbedder

    api_key = s.page_embed_api_key or s.llm_api_key
    key = ("page", s.page_embed_model, url, api_key, s.llm_timeout_s, s.llm_retries)
    with _guard:
        model = _embedders.get(key)
        if model is None:
            model = _embedders[key] = ServedPageEmbedder(_server(url, s.page_embed_model, api_key, s), s.page_embed_model)
        return model


def _server(url: str, model: str, api_key: str, s: Settings) -> "LLMClient":
    """A client of one model on an OpenAI-compatible server, with the settings' limits and retries."""
    from mmrag.models.llm import LLMClient

    return LLMClient(url, model, api_key=api_key, concurrency=s.llm_concurrency, timeout_s=s.llm_timeout_s,
                     retries=s.llm_retries)


def _service(s: Settings) -> "LLMClient":
    """The client of the warm embedding service (`mmrag.serve.embeddings`)."""
    from mmrag.models.llm import LLMClient

    key = ("service", s.embed_service_url, s.llm_timeout_s, s.llm_retries)
    with _guard:
        if key not in _llms:
            _llms[key] = LLMClient(s.embed_service_url, "", concurrency=s.llm_concurrency, timeout_s=s.llm_timeout_s,
                                   retries=s.llm_retries)
        return _llms[key]


# -- stores ----------------------------------------------------------------------------------------
def manifest(settings: Settings) -> "Manifest":
    from mmrag.manifest import Manifest

    return Manifest(settings.state_path)


def milvus_store(settings: Settings, wait_s: float | None = None) -> "MilvusStore":
    """The Milvus store of the index: Milvus Lite under the data dir, or the server of MMRAG_MILVUS_URI
    (also the Lite server `mmrag up` runs on the data dir). One client per URI per process. A Lite data
    dir held by another process is waited for up to `wait_s` (default MMRAG_SLOT_WAIT_S)."""
    from mmrag.index.milvus_store import MilvusStore

    if settings.is_milvus_lite:
        settings.home.mkdir(parents=True, exist_ok=True)
    return MilvusStore(settings.resolved_milvus_uri, settings.milvus_token, settings.milvus_db, settings.collection_prefix,
                       wait_s=settings.slot_wait_s if wait_s is None else wait_s)


def milvus_index(settings: Settings, text_dim: int, image_dim: int | None,
                 wait_s: float | None = None) -> "MilvusStore":
    """`milvus_store` with its collections and indexes created (idempotent, once per process)."""
    store = milvus_store(settings, wait_s)
    key = (store.uri, store.prefix, text_dim, image_dim)
    if key not in _ensured:
        store.ensure_collections(text_dim, image_dim)
        _ensured.add(key)
    return store


def graph_store(settings: Settings, *, text_embedder: Any, llm: Any, manifest: "Manifest",
                working_dir: str | Path | None = None, namespace: str | None = None) -> "GraphStore":
    """The process's GraphStore of this configuration, built once (LightRAG and its Milvus collections
    open on first use); later calls rebind the embedder, the LLM and the manifest. `working_dir`:
    default the data dir's `lightrag/`; `namespace`: LightRAG's workspace, default
    "{collection prefix}_graph" (its Milvus collections are `{namespace}_entities`, ...)."""
    from mmrag.graph.lightrag_adapter import workspace_name
    from mmrag.graph.store import GraphStore

    s = settings
    wd = str(Path(working_dir or s.graph_dir).expanduser().resolve())
    ns = namespace or f"{s.collection_prefix}_graph"
    uri = s.resolved_milvus_uri
    dim = text_embedder.dim
    key = (wd, ns, uri, s.milvus_token, s.milvus_db, s.graph_gleaning, s.graph_unit_tokens, s.llm_concurrency, dim)
    with _guard:
        store = _graphs.get(key)
        if store is None:
            for old_key, old in list(_graphs.items()):  # LightRAG allows one live store per workspace
                if old.workspace == workspace_name(ns):
                    old.close()
                    del _graphs[old_key]
            if is_lite_uri(uri):
                Path(uri).parent.mkdir(parents=True, exist_ok=True)
            store = _graphs[key] = GraphStore(
                Path(wd), uri, s.milvus_token, s.milvus_db, embed_fn=text_embedder.embed, embed_dim=dim, llm=llm,
                manifest=manifest, namespace=ns, unit_tokens=s.graph_unit_tokens,
                lightrag_kwargs={"entity_extract_max_gleaning": s.graph_gleaning,
                                 "llm_model_max_async": max(1, s.llm_concurrency),
                                 **lightrag_timeouts(s)})
        else:
            store.rebind(text_embedder.embed, llm, manifest)
        return store


def lightrag_timeouts(s: Settings) -> dict:
    """LightRAG's own limits on a model or embedding call (its worker fails a call after twice these),
    set past what our clients allow a request with its retries: our clients time out, retry and report
    (LLMError, transient) themselves. LightRAG's default, 30 s for embeddings, failed the graph step of a
    file whose entities were embedded in this process while the machine was busy (a call waits its turn
    behind the embedder's other batches; nothing is cut off by the timeout, the step just fails)."""
    budget = int(s.llm_timeout_s * (s.llm_retries + 1)) + 60
    return {"default_llm_timeout": budget, "default_embedding_timeout": budget}


def close_graph_stores() -> None:
    """Close every GraphStore of this process (tests, or a clean shutdown)."""
    with _guard:
        for store in _graphs.values():
            store.close()
        _graphs.clear()
