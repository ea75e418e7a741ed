"""The graph's vectors: LightRAG's writes into its Milvus collections noted in the write session's
journal before Milvus sees them and held back to be written in batches (`VectorJournal`), the
embedding function that reuses the embeddings stage's vectors (`SessionEmbeddings`), and the
roll-back's reconciliation of the vectors a session touched (`reconcile`).

LightRAG upserts each merged entity and relation on its own, one embedding call for one short text
each, which cost more than all other graph work together (22 s of a 69 s ingest of 50 files;
batched: 13 s). Held upserts are written before any other call on their store (delete, read, query,
persist: `lightrag_adapter.route_vector_writes`), so the order of writes and what readers see are
unchanged; a crash loses only writes the roll-back redoes anyway."""

from __future__ import annotations

import asyncio
import threading
from typing import Awaitable, Callable

import numpy as np

from mmrag.graph.lightrag_adapter import networkx_graph

NAMESPACES = ("entities", "relationships", "chunks")


class VectorJournal:
    """One LightRAG instance's vector writes. `record(entry)` notes an entry ({"ns", "ids"}) in the
    write session's journal (`Snapshot.record`); `bind(ns, upsert)` gives the store's own upsert."""

    def __init__(self, record: Callable[[dict], None]):
        self._record = record
        self._upserts: dict[str, Callable[[dict], Awaitable]] = {}
        self.held: dict[str, dict[str, dict]] = {ns: {} for ns in NAMESPACES}

    def bind(self, ns: str, upsert: Callable[[dict], Awaitable]) -> None:
        self._upserts[ns] = upsert

    def note(self, ns: str, ids) -> None:
        """Journal the ids a write is about to touch (before Milvus sees it)."""
        self._record({"ns": ns, "ids": list(ids or [])})

    async def upsert(self, ns: str, data: dict[str, dict] | None) -> None:
        self.note(ns, data or {})
        self.held[ns].update({k: dict(v) for k, v in (data or {}).items()})

    async def flush(self, ns: str | None = None) -> None:
        """Write the held upserts, one batch per store (`ns`: that store's only)."""
        for name in [ns] if ns else NAMESPACES:
            held = self.held[name]
            if held:
                data = dict(held)
                held.clear()
                await self._upserts[name](data)

    def drop(self) -> None:
        """Forget the held upserts (a roll-back: the session's writes not yet sent)."""
        for held in self.held.values():
            held.clear()


class SessionEmbeddings:
    """LightRAG's embedding function: chunk texts the embeddings stage embedded already (`known`, set
    for a run) are not embedded again; the rest go to `embed_fn`, one batch at a time (one model,
    several concurrent LightRAG batches)."""

    def __init__(self, embed_fn: Callable[[list[str]], np.ndarray]):
        self.embed_fn = embed_fn
        self.known: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    async def __call__(self, texts: list[str]) -> np.ndarray:
        return await asyncio.to_thread(self.embed, texts)

    def embed(self, texts: list[str]) -> np.ndarray:
        known = self.known
        missing = [t for t in dict.fromkeys(texts) if t not in known]
        fresh = {}
        if missing:
            with self._lock:
                fresh = dict(zip(missing, np.asarray(self.embed_fn(missing), dtype=np.float32)))
        return np.stack([known[t] if t in known else fresh[t] for t in texts]).astype(np.float32)


async def reconcile(rag, journal: dict[str, set[str]]) -> None:
    """After the files were restored from a snapshot: every vector the session touched
    (`Snapshot.journal()`) is rewritten from the restored stores, or deleted where they no longer
    hold its item."""
    from lightrag.utils import compute_mdhash_id, make_relation_vdb_ids
    nxg = await networkx_graph(rag)
    if journal["entities"]:
        by_id = {compute_mdhash_id(n, prefix="ent-"): n for n in nxg.nodes}
        keep = {i: by_id[i] for i in journal["entities"] if i in by_id}
        if gone := sorted(journal["entities"] - set(keep)):
            await rag.entities_vdb.delete(gone)
        await rag.entities_vdb.upsert({i: _entity_payload(n, nxg.nodes[n]) for i, n in keep.items()})
    edges: dict[str, tuple[str, str]] = {}
    if journal["relationships"] or journal["entity_relations"]:
        for a, b in nxg.edges:
            ids = make_relation_vdb_ids(a, b)
            edges[ids[0]] = tuple(sorted((a, b)))
    rel_ids = set(journal["relationships"])
    for name in journal["entity_relations"]:
        if name in nxg:
            rel_ids |= {make_relation_vdb_ids(name, other)[0] for other in nxg.neighbors(name)}
    if rel_ids:
        keep_rel = {i: edges[i] for i in rel_ids if i in edges}
        if gone := sorted(rel_ids - set(keep_rel)):
            await rag.relationships_vdb.delete(gone)
        await rag.relationships_vdb.upsert({i: _relation_payload(a, b, nxg.edges[a, b])
                                            for i, (a, b) in keep_rel.items()})
    if journal["chunks"]:
        ids = sorted(journal["chunks"])
        recs = dict(zip(ids, await rag.text_chunks.get_by_ids(ids)))
        if gone := [i for i in ids if not recs[i]]:
            await rag.chunks_vdb.delete(gone)
        await rag.chunks_vdb.upsert({i: r for i, r in recs.items() if r})


def _entity_payload(name: str, data: dict) -> dict:
    """An entity's record in LightRAG's vector store, as LightRAG writes it (content = name + description)."""
    desc = data.get("description", "")
    return {"content": f"{name}\n{desc}", "entity_name": name, "source_id": data.get("source_id", ""),
            "description": desc, "entity_type": data.get("entity_type", ""), "file_path": data.get("file_path", "")}


def _relation_payload(a: str, b: str, data: dict) -> dict:
    src, tgt = sorted((a, b))
    kw, desc = data.get("keywords", ""), data.get("description", "")
    return {"src_id": src, "tgt_id": tgt, "source_id": data.get("source_id", ""), "content": f"{kw}\t{src}\n{tgt}\n{desc}",
            "keywords": kw, "description": desc, "weight": data.get("weight", 1.0), "file_path": data.get("file_path", "")}
