"""The graph's vector writes: LightRAG's upserts into its Milvus collections held back and written
in batches, each noted in the write session's journal first (so a roll-back knows what to rewrite),
the roll-back's reconciliation, and the embedding function that reuses the embeddings stage's
vectors. A mixin of `mmrag.graph.store.GraphStore`."""

from __future__ import annotations

import asyncio

import numpy as np


class VectorJournalMixin:
    """GraphStore's vector-write methods (its `_rag`, `snapshot`, `_embed_fn`, `_known_vectors`)."""

    def _journal_vector_writes(self, rag) -> None:
        """Every upsert/delete on LightRAG's vector stores notes the ids it touches in the session's
        journal before Milvus sees it, so a roll-back knows which vectors to rewrite or drop.

        Upserts are held back and written together (`_flush_vectors`): LightRAG upserts each merged
        entity and relation on its own, one embedding call for one short text each, which cost more
        than all other graph work together (22 s of a 69 s ingest of 50 files; batched: 13 s). Any other call on
        the store (delete, read, query, persist) writes what is held first, so the order of writes
        and what readers see are unchanged; a crash loses only writes the roll-back redoes anyway."""
        from lightrag.utils import compute_mdhash_id

        record = self.snapshot.record
        self._vector_flushes, self._vector_held = [], []
        for ns, vdb in (("entities", rag.entities_vdb), ("relationships", rag.relationships_vdb),
                        ("chunks", rag.chunks_vdb)):
            held: dict[str, dict] = {}

            async def flush(_f=vdb.upsert, _held=held):
                if _held:
                    data = dict(_held)
                    _held.clear()
                    await _f(data)

            async def j_upsert(data, _ns=ns, _held=held):
                record({"ns": _ns, "ids": list(data or {})})
                _held.update({k: dict(v) for k, v in (data or {}).items()})

            async def j_delete(ids, _f=vdb.delete, _ns=ns, _flush=flush):
                record({"ns": _ns, "ids": list(ids or [])})
                await _flush()
                return await _f(ids)

            def flushing(f, _flush=flush):
                async def call(*a, **kw):
                    await _flush()
                    return await f(*a, **kw)
                return call

            for name in ("query", "get_by_id", "get_by_ids", "get_vectors_by_ids", "index_done_callback",
                         "delete_entity", "delete_entity_relation", "finalize", "drop"):
                setattr(vdb, name, flushing(getattr(vdb, name)))
            vdb.upsert, vdb.delete = j_upsert, j_delete
            self._vector_flushes.append(flush)
            self._vector_held.append(held)
        ent_delete, rel_delete = rag.entities_vdb.delete_entity, rag.relationships_vdb.delete_entity_relation

        async def j_delete_entity(name, _f=ent_delete):
            record({"ns": "entities", "ids": [compute_mdhash_id(name, prefix="ent-")]})
            return await _f(name)

        async def j_delete_entity_relation(name, _f=rel_delete):
            record({"ns": "entity_relations", "ids": [name]})
            return await _f(name)

        rag.entities_vdb.delete_entity = j_delete_entity
        rag.relationships_vdb.delete_entity_relation = j_delete_entity_relation

    async def _flush_vectors(self) -> None:
        """Write the vector upserts held back (`_journal_vector_writes`), in one batch per store."""
        for flush in getattr(self, "_vector_flushes", []):
            await flush()

    async def _aembed(self, texts: list[str]) -> np.ndarray:
        def call():
            # Chunk texts were embedded by the embeddings stage already: reuse those vectors.
            known = self._known_vectors
            missing = [t for t in dict.fromkeys(texts) if t not in known]
            fresh = {}
            if missing:
                with self._embed_lock:  # one model, several concurrent LightRAG batches
                    fresh = dict(zip(missing, np.asarray(self._embed_fn(missing), dtype=np.float32)))
            return np.stack([known[t] if t in known else fresh[t] for t in texts]).astype(np.float32)

        return await asyncio.to_thread(call)

    async def _areconcile(self, journal: dict[str, set[str]]) -> None:
        from lightrag.utils import compute_mdhash_id, make_relation_vdb_ids
        rag = self._rag
        nxg = await rag.chunk_entity_relation_graph._get_graph()
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
        await self._flush_vectors()


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
