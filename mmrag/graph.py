"""The knowledge graph: one LightRAG instance on the app's Milvus, a NetworkX graph and JSON stores.

No LLM: a structural graph through `ainsert_custom_kg` (document, sections, passages, figures/tables/
equations; "contains" edges; "references" edges from text saying "Figure 3"/"Tab. 2" to the item whose
caption starts so). With an LLM: LightRAG's extraction over *our* chunks (`ainsert` + a chunking function
returning them, so chunk ids stay md5-of-content and doc-status lists them for `adelete_by_doc_id`),
plus an entity per modal item that `belongs_to` the document. Removal follows the manifest and never
deletes what another indexed file also holds. LightRAG's asyncio locks are process-global, so every
GraphStore runs its coroutines on one event-loop thread; the sync API works from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Coroutine

import numpy as np

from mmrag.blocks import ParsedDocument
from mmrag.chunking import Chunk
from mmrag.state import Manifest
from mmrag.structural_kg import build_structural_kg, modal_names
from mmrag.lightrag_runtime import _OPEN, _Loop, _milvus_env, _SharedTokenizer, workspace_name
from mmrag.tokenize import TOKENIZER

MODES = ("naive", "local", "global", "hybrid", "mix")
REL_SEP = "\x1f"  # manifest ref of a relation: "src\x1ftgt", endpoints sorted


def chunk_text(text: str) -> str:
    """The text LightRAG stores for a chunk (it sanitizes and strips)."""
    from lightrag.utils import sanitize_text_for_encoding
    return sanitize_text_for_encoding(text)


def chunk_id(text: str) -> str:
    """LightRAG's chunk id: md5 of the content, so identical chunks of two files share one id."""
    from lightrag.utils import compute_mdhash_id
    return compute_mdhash_id(chunk_text(text), prefix="chunk-")


class GraphStore:
    def __init__(self, working_dir: Path, milvus_uri: str, milvus_token: str = "", milvus_db: str = "", *,
                 embed_fn: Callable[[list[str]], np.ndarray], embed_dim: int, llm: Any = None,
                 manifest: Manifest, namespace: str = "mmrag_graph", lightrag_kwargs: dict | None = None):
        self.working_dir = Path(working_dir).expanduser().resolve()
        self.milvus_uri, self.milvus_token, self.milvus_db = str(milvus_uri), milvus_token, milvus_db
        # LightRAG's workspace: Milvus collections "{ws}_entities|_relationships|_chunks", files in working_dir/ws
        self.workspace = workspace_name(namespace)
        self.embed_dim, self.lightrag_kwargs = embed_dim, dict(lightrag_kwargs or {})
        self.rebind(embed_fn, llm, manifest)
        self._lock, self._embed_lock = threading.RLock(), threading.Lock()
        self._pending: dict[str, list[dict]] = {}
        self._known_vectors: dict[str, np.ndarray] = {}
        self._rag = None

    def rebind(self, embed_fn: Callable, llm: Any, manifest: Manifest) -> None:
        """Swap embedder, LLM and manifest; the open LightRAG instance is kept."""
        self._embed_fn, self.llm, self.manifest = embed_fn, llm, manifest

    def run(self, coro: Coroutine) -> Any:
        """Run a coroutine on the LightRAG loop (for callers that need LightRAG's own API)."""
        return _Loop.run(coro)

    @property
    def rag(self):
        """The LightRAG instance, built and initialized (storages, pipeline status) on first use."""
        with self._lock:
            if self._rag is None:
                if _OPEN.get(self.workspace, self.working_dir) != self.working_dir:
                    raise ValueError(f"workspace {self.workspace!r} is open on {_OPEN[self.workspace]} in this "
                                     "process; LightRAG shares in-memory stores per workspace")
                with _milvus_env(self.milvus_uri, self.milvus_token, self.milvus_db):
                    self._rag = self.run(self._aopen())
                _OPEN[self.workspace] = self.working_dir
            return self._rag

    async def _aopen(self):
        from lightrag import LightRAG

        # lightrag.utils sets its logger to INFO at import and logs every storage write; our assets
        # report per-file outcomes in Dagster metadata instead.
        logging.getLogger("lightrag").setLevel(logging.WARNING)
        from lightrag.kg.shared_storage import initialize_pipeline_status
        from lightrag.utils import EmbeddingFunc, Tokenizer
        rag = LightRAG(
            working_dir=str(self.working_dir), workspace=self.workspace, kv_storage="JsonKVStorage",
            vector_storage="MilvusVectorDBStorage", graph_storage="NetworkXStorage",
            doc_status_storage="JsonDocStatusStorage", tokenizer=Tokenizer("mmrag-word", _SharedTokenizer()),
            # closures, not bound methods: LightRAG deep-copies its config, bound methods would copy self
            embedding_func=EmbeddingFunc(embedding_dim=self.embed_dim, func=lambda t, **kw: self._aembed(t)),
            llm_model_func=lambda *a, **kw: self._allm(*a, **kw), chunking_func=lambda *a: self._chunking(*a),
            **{"vector_db_storage_cls_kwargs": {"cosine_better_than_threshold": 0.2}, "embedding_batch_num": 32,
               **self.lightrag_kwargs})
        await rag.initialize_storages()
        await initialize_pipeline_status(workspace=self.workspace)  # idempotent (1.4.16 does it above too)
        return rag

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

    async def _allm(self, prompt: str, system_prompt: str | None = None, history_messages=None, **kw: Any) -> str:
        kw.pop("hashing_kv", None)
        if self.llm is None:
            raise RuntimeError("LightRAG asked for an LLM, but this graph store has none (structural mode)")
        return await self.llm.acomplete(prompt, system_prompt=system_prompt, history_messages=history_messages or [], **kw)

    def _chunking(self, tokenizer, content, split_by, split_only, overlap, size):
        if content in self._pending:  # our chunks for the document being inserted
            return self._pending[content]
        from lightrag.operate import chunking_by_token_size
        return chunking_by_token_size(tokenizer, content, split_by, split_only, overlap, size)

    def index_file(self, file_key: str, doc: ParsedDocument, chunks: list[Chunk]) -> dict:
        """Replace the file's contributions with a fresh graph of `chunks`; returns stats."""
        result = self.index_files([(file_key, doc, chunks)])[file_key]
        if isinstance(result, BaseException):
            raise result
        return result

    def index_files(self, batch: list[tuple[str, ParsedDocument, list[Chunk]]], persist_every: int = 25,
                    known_vectors: dict[str, np.ndarray] | None = None) -> dict[str, dict | Exception]:
        """`index_file` for the files of a run: {file key: stats, or the exception that file raised}.

        LightRAG writes every store to disk (the whole GraphML file included) after each insert and
        delete, which costs O(graph size) per file; here the writes happen once per `persist_every`
        files and at the end, so a crash loses at most that many files' graph updates (their
        partitions stay stale and are redone). `known_vectors` maps chunk texts to the vectors the
        embeddings stage computed, so LightRAG does not embed them again."""
        with self._lock:
            self.rag  # noqa: B018  (open before entering the loop)
            self._known_vectors = {chunk_text(t): np.asarray(v, dtype=np.float32) for t, v in (known_vectors or {}).items()}
            try:
                results = self.run(self._aindex_many(batch, persist_every))
            finally:
                self._known_vectors = {}
            nodes, edges = self.stats()
            for r in results.values():
                if isinstance(r, dict):
                    r["nodes"], r["edges"] = nodes, edges
            return results

    def _llm_identity(self) -> str:
        return f"{getattr(self.llm, 'base_url', '')}|{getattr(self.llm, 'model', type(self.llm).__name__)}"

    async def _cache_for_current_llm(self) -> None:
        """LightRAG keys its LLM response cache by prompt alone: after a model change it would hand
        back the old model's extractions. The model that filled the cache is noted beside the
        graph; when another model extracts, the cache is dropped first."""
        if self.llm is None:
            return
        marker = self.working_dir / f"{self.workspace}.llm-cache-model"
        ident = self._llm_identity()
        old = marker.read_text(encoding="utf-8") if marker.exists() else None
        if old == ident:
            return
        if old is not None:
            await self._rag.llm_response_cache.drop()
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(ident, encoding="utf-8")

    async def _aindex_many(self, batch, persist_every: int) -> dict:
        await self._cache_for_current_llm()
        results: dict[str, dict | Exception] = {}
        for start in range(0, len(batch), max(1, persist_every)):
            async with self._persist_once():
                for fk, doc, chunks in batch[start : start + persist_every]:
                    try:
                        results[fk] = await self._aindex_one(fk, doc, chunks)
                    except Exception as e:  # one file's failure must not stop the others
                        results[fk] = e
        return results

    async def _aindex_one(self, fk: str, doc: ParsedDocument, chunks: list[Chunk]) -> dict:
        await self._aremove(fk)
        t0 = time.perf_counter()
        items = [(c, t) for c in chunks if (t := chunk_text(c.text))]
        if not items:
            return {"mode": "none", "chunks": 0, "entities": 0, "relations": 0}
        ids = [chunk_id(t) for _, t in items]
        self.manifest.set_graph_refs(fk, "doc", [fk])  # before writing: a failure can clean up
        self.manifest.set_graph_refs(fk, "chunk", sorted(set(ids)))
        try:
            build = self._aindex_llm if self.llm is not None else self._aindex_structural
            stats = await build(fk, doc, items, ids)
        except BaseException:
            with contextlib.suppress(Exception):
                await self._aremove(fk)
            raise
        stats["seconds"] = round(time.perf_counter() - t0, 3)
        return stats

    @contextlib.asynccontextmanager
    async def _persist_once(self):
        """Within the block, LightRAG's per-operation `_insert_done` (persist every store) only
        records that a write is due; one real write happens on exit."""
        rag = self._rag
        due = False

        async def deferred(*_a, **_k) -> None:
            nonlocal due
            due = True

        rag._insert_done = deferred  # shadows the bound method on this instance only
        try:
            yield
        finally:
            del rag._insert_done
            if due:
                await rag._insert_done()

    def remove_file(self, file_key: str) -> dict:
        """Remove what this file alone contributed; idempotent, a no-op for an unknown file."""
        with self._lock:
            self.rag  # noqa: B018  (open it here, not inside the loop)
            return self.run(self._aremove(file_key))

    def stats(self) -> tuple[int, int]:
        """(nodes, edges) of the graph."""
        self.rag  # noqa: B018
        return self.run(self._astats())

    def query_context(self, question: str, mode: str = "mix", top_k: int = 10) -> str:
        """Retrieved context only, no answer. Keyword modes ask the LLM for keywords; without an LLM
        the question itself is used as the high- and low-level keyword."""
        from lightrag import QueryParam
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        p = QueryParam(mode=mode, only_need_context=True, top_k=top_k, chunk_top_k=top_k, enable_rerank=False)
        if mode != "naive" and self.llm is None:
            p.hl_keywords, p.ll_keywords = [question], [question]
        res = self.run(self.rag.aquery_llm(question, p))
        if res.get("status") == "failure":
            if res.get("metadata", {}).get("failure_reason") == "no_results":
                return ""
            raise RuntimeError(res.get("message", "LightRAG query failed"))
        return (res.get("llm_response") or {}).get("content") or ""

    def close(self) -> None:
        with self._lock:
            if self._rag is not None:
                self.run(self._aclose())
                self._rag = None
                _OPEN.pop(self.workspace, None)

    async def _aclose(self) -> None:
        await self._rag.finalize_storages()
        # LightRAG keeps JSON stores in process-global dicts keyed "{workspace}:{namespace}": drop them
        # so a later store on this workspace reloads from disk instead of reusing this one's memory.
        from lightrag.kg import shared_storage as ss
        for d in (ss._shared_dicts, ss._init_flags, ss._update_flags):
            for k in [k for k in (d or {}) if k.startswith(self.workspace + ":")]:
                d.pop(k, None)

    async def _astats(self) -> tuple[int, int]:
        g = self._rag.chunk_entity_relation_graph
        if hasattr(g, "_get_graph"):  # NetworkX: count without copying every node
            nxg = await g._get_graph()
            return nxg.number_of_nodes(), nxg.number_of_edges()
        return len(await g.get_all_nodes()), len(await g.get_all_edges())

    async def _aindex_structural(self, fk: str, doc: ParsedDocument, items: list, ids: list[str]) -> dict:
        ents, rels, xrefs, src = build_structural_kg(fk, doc, items)
        self.manifest.set_graph_refs(fk, "entity", sorted(ents))
        self.manifest.set_graph_refs(fk, "relation", sorted(REL_SEP.join(k) for k in rels))
        rag = self._rag
        before = dict(zip(ids, await rag.text_chunks.get_by_ids(ids)))
        kg_chunks = [{"content": t, "source_id": src[c.id], "file_path": fk, "chunk_order_index": i}
                     for i, (c, t) in enumerate(items)]
        await rag.ainsert_custom_kg({"chunks": kg_chunks, "entities": list(ents.values()),
                                     "relationships": list(rels.values())}, full_doc_id=fk)
        # ainsert_custom_kg rewrites chunk records: keep the LLM-cache links an LLM-indexed sharer needs
        keep = {k: v["llm_cache_list"] for k, v in before.items() if v and v.get("llm_cache_list")}
        if keep:
            now = dict(zip(keep, await rag.text_chunks.get_by_ids(list(keep))))
            await rag.text_chunks.upsert({k: {**now[k], "llm_cache_list": keep[k]} for k in keep if now[k]})
            await rag.text_chunks.index_done_callback()
        return {"mode": "structural", "chunks": len(set(ids)), "entities": len(ents), "relations": len(rels),
                "cross_refs": xrefs}

    async def _aindex_llm(self, fk: str, doc: ParsedDocument, items: list, ids: list[str]) -> dict:
        from lightrag.constants import GRAPH_FIELD_SEP
        rag, full = self._rag, chunk_text("\n\n".join(t for _, t in items))
        self._pending[full] = [{"content": t, "tokens": TOKENIZER.count(t), "chunk_order_index": i}
                               for i, (_, t) in enumerate(items)]
        try:
            await rag.ainsert(full, ids=[fk], file_paths=[fk])
        finally:
            self._pending.pop(full, None)
        st = await rag.doc_status.get_by_id(fk) or {}
        if st.get("status") != "processed":  # the pipeline records failures instead of raising
            raise RuntimeError(f"LightRAG could not index {fk}: {st.get('error_msg') or st.get('status')}")
        extracted = list((await rag.full_entities.get_by_id(fk) or {}).get("entity_names", []))
        pairs = [tuple(sorted(p)) for p in (await rag.full_relations.get_by_id(fk) or {}).get("relation_pairs", [])]
        from_chunk: dict[str, list[str]] = {}
        for name, node in (await rag.chunk_entity_relation_graph.get_nodes_batch(extracted)).items():
            for cid in (node.get("source_id") or "").split(GRAPH_FIELD_SEP):
                from_chunk.setdefault(cid, []).append(name)
        id_of = {c.id: i for (c, _), i in zip(items, ids)}
        chunk_of = {bid: c for c, _ in items for bid in c.block_ids}
        nodes = {fk: {"entity_type": "document", "description": f"Document '{doc.title}' ({doc.rel_path})",
                      "source_id": ids[0]}}
        edges: dict[tuple[str, str], dict] = {}
        modal = modal_names(fk, doc)
        for b in doc.modal_blocks():
            if (c := chunk_of.get(b.id)) is None:
                continue
            cid, info = id_of[c.id], b.meta.get("entity") or {}
            name = f"{fk} | {info['entity_name']}" if info.get("entity_name") else modal[b.id][0]
            nodes[name] = {"entity_type": info.get("entity_type") or b.kind.value, "source_id": cid,
                           "description": info.get("summary") or b.description or b.searchable_text()}
            edges[(name, fk)] = {"keywords": "belongs_to", "description": f"{name} belongs to {fk}", "source_id": cid}
            for e in from_chunk.get(cid, []):  # RAG-Anything: entities of its description belong to it
                if e != name:
                    edges[(e, name)] = {"keywords": "belongs_to", "description": f"{e} belongs to {name}", "source_id": cid}
        await self._write_kg(fk, nodes, edges)
        self.manifest.set_graph_refs(fk, "entity", sorted(set(extracted) | set(nodes)))
        self.manifest.set_graph_refs(fk, "relation", sorted({REL_SEP.join(sorted(k)) for k in [*pairs, *edges]}))
        return {"mode": "llm", "chunks": len(set(ids)), "entities": len(set(extracted) | set(nodes)),
                "relations": len({tuple(sorted(k)) for k in [*pairs, *edges]})}

    async def _write_kg(self, fk: str, nodes: dict[str, dict], edges: dict[tuple[str, str], dict]) -> None:
        """Our own nodes/edges with real chunk ids as source (ainsert_custom_kg would re-upsert the
        chunks and drop the LLM-cache links that LightRAG's rebuild-on-delete reads)."""
        from lightrag.utils import compute_mdhash_id, make_relation_vdb_ids
        rag, now = self._rag, int(time.time())
        g = rag.chunk_entity_relation_graph
        await g.upsert_nodes_batch([(n, {"entity_id": n, **d, "file_path": fk, "created_at": now})
                                    for n, d in nodes.items()])
        await g.upsert_edges_batch([(a, b, {"weight": 1.0, **d, "file_path": fk, "created_at": now})
                                    for (a, b), d in edges.items()])
        await rag.entities_vdb.upsert({compute_mdhash_id(n, prefix="ent-"): {
            "content": f"{n}\n{d['description']}", "entity_name": n, "file_path": fk, **d} for n, d in nodes.items()})
        await rag.relationships_vdb.upsert({make_relation_vdb_ids(a, b)[0]: {
            "src_id": min(a, b), "tgt_id": max(a, b), "source_id": d["source_id"], "file_path": fk,
            "content": f"{d['keywords']}\t{a}\n{b}\n{d['description']}"} for (a, b), d in edges.items()})
        await rag._insert_done()

    async def _aremove(self, fk: str) -> dict:
        from lightrag.utils import compute_mdhash_id, make_relation_chunk_key, make_relation_vdb_ids
        rag, mf = self._rag, self.manifest
        others = lambda kind, ref: [h for h in mf.ref_holders(kind, ref) if h != fk]  # noqa: E731
        chunks = set(mf.graph_refs(fk, "chunk"))
        shared = {c: h for c in chunks if (h := others("chunk", c))}
        if st := await rag.doc_status.get_by_id(fk):  # LLM path: LightRAG deletes and rebuilds
            keep = [c for c in st.get("chunks_list") or [] if c not in shared]
            await rag.doc_status.upsert({fk: {**st, "chunks_list": keep, "chunks_count": len(keep)}})
            res = await rag.adelete_by_doc_id(fk)
            if res.status not in ("success", "not_found"):
                raise RuntimeError(f"LightRAG could not delete {fk}: {res.message}")
        g = rag.chunk_entity_relation_graph
        ents = sorted(await g.has_nodes_batch([e for e in mf.graph_refs(fk, "entity") if not others("entity", e)]))
        pairs = {tuple(r.split(REL_SEP)) for r in mf.graph_refs(fk, "relation") if not others("relation", r)}
        for es in (await g.get_nodes_edges_batch(ents)).values():  # edges of deleted nodes go too
            pairs |= {tuple(sorted(e)) for e in es or []}
        if pairs:
            await rag.relationships_vdb.delete([i for a, b in pairs for i in make_relation_vdb_ids(a, b)])
            await g.remove_edges(list(pairs))
            await rag.relation_chunks.delete([make_relation_chunk_key(a, b) for a, b in pairs])
        if ents:
            await rag.entities_vdb.delete([compute_mdhash_id(e, prefix="ent-") for e in ents])
            await g.remove_nodes(ents)
            await rag.entity_chunks.delete(ents)
        gone = sorted(chunks - set(shared))
        if gone:
            await rag.chunks_vdb.delete(gone)
            await rag.text_chunks.delete(gone)
        for cid, holders in shared.items():  # a surviving shared chunk now belongs to another file
            rec = await rag.text_chunks.get_by_id(cid)
            if rec and rec.get("full_doc_id") == fk:
                rec = {k: v for k, v in rec.items() if k != "_id"} | {"full_doc_id": holders[0], "file_path": holders[0]}
                await rag.text_chunks.upsert({cid: rec})
                await rag.chunks_vdb.upsert({cid: rec})
        await rag._insert_done()
        mf.clear_graph_refs(fk)
        return {"entities": len(ents), "relations": len(pairs), "chunks": len(gone), "kept_shared": len(shared)}
