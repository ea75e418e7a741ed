"""Everything of LightRAG's that is not its public API, in one place: building an instance on our
Milvus and tokenizer, its process-global stores (dropped per workspace), its per-operation persist
(deferred to a session's commit), its file writes (made atomic), its vector stores' methods (routed
through a session's journal), its extraction step (over our units) and its NetworkX graph. Also one
event loop per process, the Milvus env window, our ids of LightRAG's documents and chunks, and graph
counts read from disk without opening LightRAG. The rest of `mmrag.graph` calls LightRAG's public API
(storage methods, `ainsert`, `ainsert_custom_kg`, `adelete_by_doc_id`, `aquery_*`,
`lightrag.operate.extract_entities`) and this module."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any, Callable, Coroutine

from mmrag.files import replacing
from mmrag.models.tokenizer import TOKENIZER

# LightRAG's Milvus delete reads `result.get(...)`; Milvus Lite 3.x returns a list, so each delete logs
# an ERROR although the rows are gone (the tests check): drop exactly that message.
logging.getLogger("lightrag").addFilter(lambda r: not (
    "Error while deleting vectors from" in (m := r.getMessage()) and "'list' object has no attribute 'get'" in m))


def graph_counts(working_dir: Path, namespace: str | None = None) -> tuple[int, int]:
    """(nodes, edges) read from the graph files on disk, without LightRAG or Milvus (for `status`):
    the given namespace's, or the sum over every workspace under working_dir."""
    import xml.etree.ElementTree as ET

    name = "graph_chunk_entity_relation.graphml"
    root = Path(working_dir)
    files = [root / workspace_name(namespace) / name] if namespace else sorted(root.glob(f"*/{name}"))
    nodes = edges = 0
    for f in (f for f in files if f.exists()):
        for _, el in ET.iterparse(f):
            tag = el.tag.rsplit("}", 1)[-1]
            nodes, edges = nodes + (tag == "node"), edges + (tag == "edge")
            el.clear()
    return nodes, edges


def workspace_name(namespace: str) -> str:
    """LightRAG workspace for a namespace: it prefixes Milvus collection names, so [A-Za-z0-9_] only."""
    return re.sub(r"\W", "_", namespace, flags=re.ASCII).strip("_") or "mmrag_graph"


class SharedTokenizer:
    """TOKENIZER behind a handle that LightRAG's deep copies of its config (asdict) share: a copy
    of TOKENIZER itself fails on its lock and would fork the interned vocabulary."""

    encode, decode = staticmethod(TOKENIZER.encode), staticmethod(TOKENIZER.decode)

    def __deepcopy__(self, memo: dict) -> "SharedTokenizer":
        return self


MAX_DOC_ID_BYTES = 64  # ... and a chunk's document id in VARCHAR(64)


def lr_doc_id(file_key: str) -> str:
    """LightRAG's document id of a file: the file key, or a hash of it when the key is longer than
    the chunk collection's `full_doc_id` field holds."""
    if len(file_key.encode("utf-8")) <= MAX_DOC_ID_BYTES:
        return file_key
    return "doc-" + hashlib.md5(file_key.encode("utf-8")).hexdigest()


def chunk_text(text: str) -> str:
    """The text LightRAG stores for a chunk (it sanitizes and strips)."""
    from lightrag.utils import sanitize_text_for_encoding
    return sanitize_text_for_encoding(text)


def chunk_id(text: str) -> str:
    """LightRAG's chunk id: md5 of the content, so identical chunks of two files share one id."""
    from lightrag.utils import compute_mdhash_id
    return compute_mdhash_id(chunk_text(text), prefix="chunk-")


class Loop:
    """The process's one event loop for LightRAG, on a daemon thread."""

    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _guard = threading.Lock()

    @classmethod
    def run(cls, coro: Coroutine) -> Any:
        with cls._guard:
            if cls._loop is None:
                cls._loop = asyncio.new_event_loop()
                cls._thread = threading.Thread(target=cls._loop.run_forever, name="mmrag-lightrag", daemon=True)
                cls._thread.start()
        if threading.current_thread() is cls._thread:
            coro.close()
            raise RuntimeError("GraphStore's sync API called from inside its own event loop")
        return asyncio.run_coroutine_threadsafe(coro, cls._loop).result()


_ENV_LOCK = threading.Lock()
OPEN: dict[str, Path] = {}  # workspace -> working_dir of the open GraphStore using it


@contextlib.contextmanager
def milvus_env(uri: str, token: str, db: str):
    """LightRAG's Milvus storage takes its connection only from env vars (required to exist when
    LightRAG is built, read when storages initialize): set them for that window, then restore them.
    pymilvus parses MILVUS_URI when *imported* and rejects a Lite file path, so import it first."""
    import lightrag.kg.milvus_impl  # noqa: F401  (imports pymilvus)
    from mmrag.config import is_lite_uri

    if is_lite_uri(uri):
        from mmrag.index.lite_pings import permit_pings

        permit_pings()  # the Milvus Lite server started in this process for the path takes pings
    new = {"MILVUS_URI": uri, "MILVUS_TOKEN": token or "", "MILVUS_DB_NAME": db or "",
           "MILVUS_WORKSPACE": None, "MILVUS_USER": None, "MILVUS_PASSWORD": None}
    with _ENV_LOCK:
        old = {k: os.environ.get(k) for k in new}
        _set_env(new)
        try:
            yield
        finally:
            _set_env(old)


def _set_env(values: dict[str, str | None]) -> None:
    for k, v in values.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


# -- an instance and its lifetime ---------------------------------------------------------------------
async def open_lightrag(working_dir: Path, workspace: str, *, embed_dim: int, embed: Callable, complete: Callable,
                        chunking: Callable, extract: Callable, extra: dict) -> Any:
    """A LightRAG instance with JSON/NetworkX stores in `working_dir/workspace` and vectors in Milvus
    (call inside `milvus_env`), initialized. `embed(texts)`, `complete(prompt, ...)`, `chunking(...)`:
    LightRAG's model, embedding and chunking functions; `extract(chunks, status, lock)`: its per-document
    extraction step. Pass closures, not bound methods: LightRAG deep-copies its config."""
    from lightrag import LightRAG

    # lightrag.utils sets its logger to INFO at import and logs every storage write; our assets
    # report per-file outcomes in Dagster metadata instead.
    logging.getLogger("lightrag").setLevel(logging.WARNING)
    from lightrag.kg.shared_storage import initialize_pipeline_status
    from lightrag.utils import EmbeddingFunc, Tokenizer
    rag = LightRAG(
        working_dir=str(working_dir), workspace=workspace, kv_storage="JsonKVStorage",
        vector_storage="MilvusVectorDBStorage", graph_storage="NetworkXStorage",
        doc_status_storage="JsonDocStatusStorage", tokenizer=Tokenizer("mmrag-word", SharedTokenizer()),
        embedding_func=EmbeddingFunc(embedding_dim=embed_dim, func=_in_callers_scope(lambda t, **kw: embed(t))),
        llm_model_func=_in_callers_scope(complete), chunking_func=chunking,
        **{"vector_db_storage_cls_kwargs": {"cosine_better_than_threshold": 0.2}, "embedding_batch_num": 32, **extra})
    carry_usage(rag)
    await rag.initialize_storages()
    await initialize_pipeline_status(workspace=workspace)  # idempotent (1.4.16 does it above too)
    rag._process_extract_entities = extract  # the instance's own step, over our extraction units
    return rag


_USAGE_KW = "_mmrag_usage"


def _in_callers_scope(fn: Callable) -> Callable:
    """LightRAG's model (or embedding) function, counting its requests in the usage scope of the
    task that asked (`carry_usage`), not in that of LightRAG's worker task that runs it."""
    from mmrag.models import usage

    async def run(*a, **kw):
        with usage.within(kw.pop(_USAGE_KW, None)):
            return await fn(*a, **kw)

    return run


def carry_usage(rag) -> None:
    """LightRAG queues its model and embedding calls to worker tasks started by the first caller
    (`priority_limit_async_func_call`): context variables do not follow a call through the queue, so
    every request would count for that first caller's file or query. The queued functions here take
    the caller's usage scope along (`mmrag.models.usage.capture`), which `_in_callers_scope` restores."""
    from mmrag.models import usage

    queued_llm, emb = rag.llm_model_func, rag.embedding_func
    queued_emb = emb.func

    async def llm(*a, **kw):
        with _noting_model_errors():
            return await queued_llm(*a, **{_USAGE_KW: usage.capture(), **kw})

    async def embed(*a, **kw):
        with _noting_model_errors():
            return await queued_emb(*a, **{_USAGE_KW: usage.capture(), **kw})

    rag.llm_model_func = llm
    emb.func = embed  # the EmbeddingFunc its storages hold


_MODEL_ERRORS: contextvars.ContextVar[list | None] = contextvars.ContextVar("mmrag_model_errors", default=None)


@contextlib.contextmanager
def _noting_model_errors():
    """A model error raised to a LightRAG caller is also kept for `with_model_errors`: LightRAG's query
    turns it into a "failure" status with its text, losing whether a retry could help."""
    from mmrag.models.llm import LLMError

    try:
        yield
    except LLMError as e:
        if (box := _MODEL_ERRORS.get()) is not None:
            box.append(e)
        raise


async def with_model_errors(coro: Coroutine) -> tuple[Any, list]:
    """`coro`'s result, and the model errors (mmrag.models.llm.LLMError) its LightRAG calls met."""
    box: list = []
    token = _MODEL_ERRORS.set(box)
    try:
        return await coro, box
    finally:
        _MODEL_ERRORS.reset(token)


def default_chunking(tokenizer, content, split_by, split_only, overlap, size):
    """LightRAG's own token-size chunking (for text that is not one of our documents)."""
    from lightrag.operate import chunking_by_token_size
    return chunking_by_token_size(tokenizer, content, split_by, split_only, overlap, size)


async def persist(rag) -> None:
    """Write every in-memory store to disk (what LightRAG does after each insert and delete)."""
    await rag._insert_done()


@contextlib.asynccontextmanager
async def persist_deferred(rag):
    """Within the block, LightRAG's per-operation persist does nothing: a session persists once."""
    async def deferred(*_a, **_k) -> None:
        return None

    rag._insert_done = deferred  # shadows the bound method on this instance only
    try:
        yield
    finally:
        del rag._insert_done


async def close_lightrag(rag, workspace: str, *, write: bool) -> None:
    """Finalize the instance's storages (`write`: as LightRAG does, persisting; else only the vector
    stores' clients close and nothing is written, for a reader whose LLM cache must not overwrite the
    writer's file), then forget the workspace's process-global stores, so a later instance on this
    workspace loads from disk instead of reusing this one's memory."""
    if write:
        await rag.finalize_storages()
    else:
        for vdb in vector_stores(rag).values():
            with contextlib.suppress(Exception):
                await vdb.finalize()
    from lightrag.kg import shared_storage as ss
    for d in (ss._shared_dicts, ss._init_flags, ss._update_flags):
        for k in [k for k in (d or {}) if k.startswith(workspace + ":")]:
            d.pop(k, None)


async def networkx_graph(rag):
    """The NetworkX graph behind LightRAG's graph storage (read without copying it)."""
    return await rag.chunk_entity_relation_graph._get_graph()


async def graph_size(rag) -> tuple[int, int]:
    g = rag.chunk_entity_relation_graph
    if hasattr(g, "_get_graph"):  # NetworkX: count without copying every node
        nxg = await g._get_graph()
        return nxg.number_of_nodes(), nxg.number_of_edges()
    return len(await g.get_all_nodes()), len(await g.get_all_edges())


def inventory_on_disk(working_dir: Path, namespace: str) -> tuple[set[str], set[tuple[str, str]], set[str]]:
    """Every node, edge (as a sorted pair) and chunk id of the last committed graph, read from its
    files (NetworkX's GraphML, the JSON chunk store) without LightRAG, Milvus or an embedder: the
    index audit. The files are replaced whole (atomic writes), so a session in flight is not seen."""
    import json
    import xml.etree.ElementTree as ET

    ws = Path(working_dir) / workspace_name(namespace)
    nodes: set[str] = set()
    edges: set[tuple[str, str]] = set()
    graphml = ws / "graph_chunk_entity_relation.graphml"
    if graphml.exists():
        for _, el in ET.iterparse(graphml):
            tag = el.tag.rsplit("}", 1)[-1]
            if tag == "node":
                nodes.add(el.get("id"))
                el.clear()
            elif tag == "edge":
                edges.add(tuple(sorted((el.get("source"), el.get("target")))))
                el.clear()
    chunks_file = ws / "kv_store_text_chunks.json"
    chunks = set(json.loads(chunks_file.read_text(encoding="utf-8"))) if chunks_file.exists() else set()
    return nodes, edges, chunks


# -- atomic files -------------------------------------------------------------------------------------
_PATCHED = False


def _atomic(write):
    def wrapper(obj, file_name, *args, **kwargs):
        with replacing(file_name) as tmp:
            return write(obj, tmp, *args, **kwargs)

    wrapper.__wrapped__ = write
    wrapper.mmrag_atomic = True
    return wrapper


def patch_atomic_writes() -> None:
    """LightRAG writes its JSON stores and GraphML file in place: a kill mid-write leaves a file cut
    short (seen: GraphML cut mid-element). Make each write go aside and then rename (once per process)."""
    global _PATCHED
    if _PATCHED:
        return
    from lightrag.kg import json_doc_status_impl, json_kv_impl
    from lightrag.kg.networkx_impl import NetworkXStorage

    for mod in (json_kv_impl, json_doc_status_impl):
        if not getattr(mod.write_json, "mmrag_atomic", False):
            mod.write_json = _atomic(mod.write_json)
    write_nx = NetworkXStorage.__dict__["write_nx_graph"].__func__
    if not getattr(write_nx, "mmrag_atomic", False):
        NetworkXStorage.write_nx_graph = staticmethod(_atomic(write_nx))
    _PATCHED = True


# -- vector stores ------------------------------------------------------------------------------------
def vector_stores(rag) -> dict[str, Any]:
    """LightRAG's three vector stores by the journal's names for them."""
    return {"entities": rag.entities_vdb, "relationships": rag.relationships_vdb, "chunks": rag.chunks_vdb}


_FLUSH_FIRST = ("query", "get_by_id", "get_by_ids", "get_vectors_by_ids", "index_done_callback",
                "delete_entity", "delete_entity_relation", "finalize", "drop")


def route_vector_writes(rag, journal) -> None:
    """Send the instance's vector writes through `journal` (`mmrag.graph.vectors.VectorJournal`):
    upserts go to `journal.upsert(ns, data)`, which notes and holds them; a delete is noted, the held
    upserts of its store are written, then it runs; every other call on a store writes what is held
    first, so the order of writes and what readers see are unchanged. Deleting an entity's vector, or
    all relations of an entity, is noted too (`entities`: its vector id; `entity_relations`: its name)."""
    from lightrag.utils import compute_mdhash_id

    for ns, vdb in vector_stores(rag).items():
        journal.bind(ns, vdb.upsert)

        def flushing(f, _ns=ns):
            async def call(*a, **kw):
                await journal.flush(_ns)
                return await f(*a, **kw)
            return call

        async def delete(ids, _f=vdb.delete, _ns=ns):
            journal.note(_ns, ids)
            await journal.flush(_ns)
            return await _f(ids)

        async def upsert(data, _ns=ns):
            await journal.upsert(_ns, data)

        for name in _FLUSH_FIRST:
            setattr(vdb, name, flushing(getattr(vdb, name)))
        vdb.upsert, vdb.delete = upsert, delete
    ent_delete, rel_delete = rag.entities_vdb.delete_entity, rag.relationships_vdb.delete_entity_relation

    async def delete_entity(name, _f=ent_delete):
        journal.note("entities", [compute_mdhash_id(name, prefix="ent-")])
        return await _f(name)

    async def delete_entity_relation(name, _f=rel_delete):
        journal.note("entity_relations", [name])
        return await _f(name)

    rag.entities_vdb.delete_entity = delete_entity
    rag.relationships_vdb.delete_entity_relation = delete_entity_relation
