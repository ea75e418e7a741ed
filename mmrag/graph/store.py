"""The knowledge graph: one LightRAG instance on the app's Milvus, a NetworkX graph and JSON stores.

No LLM: a structural graph through `ainsert_custom_kg` (document, sections, passages, figures/tables/
equations; "contains" edges; "references" edges from text saying "Figure 3"/"Tab. 2" to the item whose
caption starts so). With an LLM: LightRAG's extraction over *our* chunks (`ainsert` + a chunking function
returning them, so chunk ids stay md5-of-content and doc-status lists them for `adelete_by_doc_id`),
plus an entity per modal item that `belongs_to` the document. Removal follows the manifest and never
deletes what another indexed file also holds. LightRAG's asyncio locks are process-global, so every
GraphStore runs its coroutines on one event-loop thread; the sync API works from any thread.

Writes happen in sessions (`index_files`, `remove_files`), one writer process at a time, each
crash-safe (`mmrag.graph.session`, `mmrag.graph.snapshot`): a snapshot when it begins, a journal of
the vectors it touches, and a commit that persists LightRAG's stores and then, in one SQLite
transaction, the manifest's references, the files' statuses and the session's id. A session that
did not commit is rolled back by the next one, in whatever process: nothing it wrote survives.

GraphStore is built from parts with their own state: the session (`WriteSession`), the extractor
(`mmrag.graph.extraction.Extractor`: units, a session's requests at once and the next session's
ahead, the model function), the vector journal and the embedding function (`mmrag.graph.vectors`).
What of LightRAG is not its public API is in `mmrag.graph.lightrag_adapter`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any, Callable, Coroutine

import numpy as np

from mmrag.blocks import ParsedDocument
from mmrag.faults import crash_point
from mmrag.files import write_atomic
from mmrag.graph import lightrag_adapter as adapter
from mmrag.graph.extraction import Extractor
from mmrag.graph.lightrag_adapter import (
    OPEN,
    Loop,
    chunk_id,
    chunk_text,
    lr_doc_id,
    workspace_name,
)
from mmrag.graph.scope import REL_SEP, scoped_context
from mmrag.graph.session import GraphSessionError, WriteSession
from mmrag.graph.snapshot import Snapshot
from mmrag.graph.structural import build_structural_kg, modal_names
from mmrag.graph.vectors import SessionEmbeddings, VectorJournal, reconcile
from mmrag.ids import bounded_name, xml_safe
from mmrag.index.chunking import Chunk
from mmrag.manifest import Manifest
from mmrag.models import usage
from mmrag.models.tokenizer import TOKENIZER

__all__ = ["MODES", "GraphSessionError", "GraphStore", "chunk_id", "chunk_text", "lr_doc_id"]
MODES = ("naive", "local", "global", "hybrid", "mix")
# LightRAG opens a Milvus Lite data dir on its own: taken for this process first (mmrag.index.lite_lock); a
# process that already holds it (every ingest, the query service) does not wait at all.
LITE_WAIT_S = 10.0


class GraphStore:
    def __init__(self, working_dir: Path, milvus_uri: str, milvus_token: str = "", milvus_db: str = "", *,
                 embed_fn: Callable[[list[str]], np.ndarray], embed_dim: int, llm: Any = None,
                 manifest: Manifest, namespace: str = "mmrag_graph", lightrag_kwargs: dict | None = None,
                 unit_tokens: int = 1200):
        self.working_dir = Path(working_dir).expanduser().resolve()
        self.milvus_uri, self.milvus_token, self.milvus_db = str(milvus_uri), milvus_token, milvus_db
        # LightRAG's workspace: Milvus collections "{ws}_entities|_relationships|_chunks", files in working_dir/ws
        self.workspace = workspace_name(namespace)
        self.embed_dim, self.lightrag_kwargs = embed_dim, dict(lightrag_kwargs or {})
        self.snapshot = Snapshot(self.working_dir / self.workspace)
        self.session = WriteSession(self.snapshot, manifest, self.workspace,
                                    self.working_dir / f".{self.workspace}.writer.lock", stores=self)
        self.extractor = Extractor(llm, unit_tokens)
        self.embeddings = SessionEmbeddings(embed_fn)
        self.vectors: VectorJournal | None = None  # the open instance's vector writes
        self._lock = threading.RLock()
        self._pending: dict[str, list[dict]] = {}  # our chunks of the document LightRAG is inserting
        self._rag = None
        self.rebind(embed_fn, llm, manifest)

    def rebind(self, embed_fn: Callable, llm: Any, manifest: Manifest) -> None:
        """Swap embedder, LLM and manifest; the open LightRAG instance is kept."""
        self.embeddings.embed_fn, self.extractor.llm, self.manifest = embed_fn, llm, manifest
        self.session.manifest = manifest

    @property
    def llm(self) -> Any:
        return self.extractor.llm

    @property
    def embed_fn(self) -> Callable:
        return self.embeddings.embed_fn

    def run(self, coro: Coroutine) -> Any:
        """Run a coroutine on the LightRAG loop (for callers that need LightRAG's own API)."""
        return Loop.run(coro)

    @property
    def rag(self):
        """The LightRAG instance, built and initialized (storages, pipeline status) on first use."""
        with self._lock:
            if self._rag is None:
                if OPEN.get(self.workspace, self.working_dir) != self.working_dir:
                    raise ValueError(f"workspace {self.workspace!r} is open on {OPEN[self.workspace]} in this "
                                     "process; LightRAG shares in-memory stores per workspace")
                adapter.patch_atomic_writes()
                self.session.loaded()
                ex, emb = self.extractor, self.embeddings
                from mmrag.config import is_lite_uri

                if is_lite_uri(self.milvus_uri):  # LightRAG opens Milvus Lite itself: take the data dir first
                    from mmrag.index import lite_lock

                    lite_lock.hold(self.milvus_uri, LITE_WAIT_S)
                with adapter.milvus_env(self.milvus_uri, self.milvus_token, self.milvus_db):
                    # closures, not bound methods: LightRAG deep-copies its config, bound methods would copy self
                    rag = self.run(adapter.open_lightrag(
                        self.working_dir, self.workspace, embed_dim=self.embed_dim, embed=lambda t: emb(t),
                        complete=lambda *a, **kw: ex.complete(*a, **kw), chunking=lambda *a: self._chunking(*a),
                        extract=lambda chunks, *a: ex.extract_units(self._rag, chunks, *a), extra=self.lightrag_kwargs))
                self.vectors = VectorJournal(self.snapshot.record)
                adapter.route_vector_writes(rag, self.vectors)
                self._rag = rag
                OPEN[self.workspace] = self.working_dir
            return self._rag

    def _chunking(self, tokenizer, content, split_by, split_only, overlap, size):
        if content in self._pending:  # our chunks for the document being inserted
            return self._pending[content]
        return adapter.default_chunking(tokenizer, content, split_by, split_only, overlap, size)

    # -- the session's stores (mmrag.graph.session.Stores) --------------------------------------------------
    def persist(self) -> None:
        self.run(adapter.persist(self._rag))

    def close(self) -> None:
        """Finalize LightRAG's stores (persisting, as LightRAG does) and let go of them."""
        with self._lock:
            if self._rag is not None:
                with contextlib.suppress(Exception):
                    self.run(adapter.close_lightrag(self._rag, self.workspace, write=True))
                self._rag = self.vectors = None
                OPEN.pop(self.workspace, None)

    def abandon(self) -> None:
        self.run(self.extractor.drop_ahead())  # what the next session asked ahead of it goes too
        if self.vectors is not None:
            self.vectors.drop()  # the session's vector writes not yet sent
        self.close()

    def reconcile(self, touched: dict[str, set[str]]) -> None:
        async def fix(rag):
            await reconcile(rag, touched)
            await self.vectors.flush()

        self.run(fix(self.rag))  # reopened on the restored files

    # -- indexing -----------------------------------------------------------------------------------
    def index_file(self, file_key: str, doc: ParsedDocument, chunks: list[Chunk]) -> dict:
        """Replace the file's contributions with a fresh graph of `chunks`; returns stats."""
        result = self.index_files([(file_key, doc, chunks)])[file_key]
        if isinstance(result, BaseException):
            raise result
        return result

    def index_files(self, batch: list[tuple[str, ParsedDocument, list[Chunk]]], persist_every: int = 25,
                    known_vectors: dict[str, np.ndarray] | None = None,
                    on_commit: Callable[[dict], dict[str, dict]] | None = None) -> dict[str, dict | Exception]:
        """`index_file` for the files of a run: {file key: stats, or the exception that file raised}.

        LightRAG writes every store to disk (the whole GraphML file included) after each insert and
        delete, which costs O(graph size) per file; here the files are committed in sessions of
        `persist_every`, so a crash loses at most that many files' graph updates (they stay stale
        and are redone). `on_commit(results of the session)` returns manifest fields per file (their
        statuses), written in the session's commit. `known_vectors` maps chunk texts to the vectors
        the embeddings stage computed, so LightRAG does not embed them again."""
        results: dict[str, dict | Exception] = {}
        with self._lock, self.session.writer():
            self.embeddings.known = {chunk_text(t): np.asarray(v, dtype=np.float32) for t, v in (known_vectors or {}).items()}
            step = max(1, persist_every)
            try:
                for start in range(0, len(batch), step):
                    part, after = batch[start: start + step], batch[start + step: start + 2 * step]
                    self.rag  # noqa: B018
                    with self.session.open():
                        done = self.run(self._aindex_many(part, after))
                        self.session.commit(on_commit(done) if on_commit else None)
                    results.update(done)
            finally:
                self.embeddings.known = {}
                self.run(self.extractor.drop_ahead())
            nodes, edges = self.stats()
        for r in results.values():
            if isinstance(r, dict):
                r["nodes"], r["edges"] = nodes, edges
        return results

    async def _cache_for_current_llm(self) -> None:
        """LightRAG keys its LLM response cache by prompt alone: after a model change it would hand
        back the old model's extractions. The model that filled the cache is noted in the graph's
        folder (so a session's roll-back restores it with the cache); when another model extracts,
        the cache is dropped first."""
        if self.llm is None:
            return
        marker = self.snapshot.ws_dir / "mmrag-llm-cache-model"
        legacy = self.working_dir / f"{self.workspace}.llm-cache-model"
        ident = self.extractor.identity()
        old = next((p.read_text(encoding="utf-8") for p in (marker, legacy) if p.exists()), None)
        if old == ident and marker.exists():
            return
        if old is not None and old != ident:
            await self._rag.llm_response_cache.drop()
        marker.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(marker, ident)

    async def _aindex_many(self, batch, after=()) -> dict:
        """One session's files; `after`: the next session's, whose extractions are asked for while
        this session merges and embeds (`Extractor.start_ahead`)."""
        await self._cache_for_current_llm()
        results: dict[str, dict | Exception] = {}
        rag = self._rag
        async with adapter.persist_deferred(rag):
            await self.extractor.prefetch(rag, batch, await self.extractor.take_ahead(rag))
            self.extractor.start_ahead(rag, after)
            for fk, doc, chunks in batch:
                try:
                    with usage.for_file(fk):  # LightRAG's merge requests (summaries) are the file's
                        results[fk] = await self._aindex_one(fk, doc, chunks)
                except GraphSessionError:
                    raise
                except Exception as e:  # one file's failure must not stop the others
                    results[fk] = e
            await self.vectors.flush()
        return results

    async def _aindex_one(self, fk: str, doc: ParsedDocument, chunks: list[Chunk]) -> dict:
        await self._aremove(fk)
        t0 = time.perf_counter()
        items = [(c, t) for c in chunks if (t := chunk_text(c.text))]
        if not items:
            return {"mode": "none", "chunks": 0, "entities": 0, "relations": 0}
        ids = [chunk_id(t) for _, t in items]
        self.session.refs.set(fk, "doc", [lr_doc_id(fk)])  # before writing: a failure can clean up
        self.session.refs.set(fk, "chunk", ids)
        try:
            if (failed := self.extractor.failure(fk)) is not None:
                raise failed
            build = self._aindex_llm if self.llm is not None else self._aindex_structural
            stats = await build(fk, doc, items, ids)
            crash_point("graph")
        except BaseException as e:
            try:
                await self._aremove(fk)
            except Exception as cleanup:  # the in-memory stores may now hold part of this file
                raise GraphSessionError(f"could not clean up after {fk} failed ({e}): {cleanup}") from cleanup
            raise
        stats["seconds"] = round(time.perf_counter() - t0, 3)
        return stats

    def remove_file(self, file_key: str) -> dict:
        """Remove what this file alone contributed; idempotent, a no-op for an unknown file."""
        return self.remove_files([file_key])[file_key]

    def remove_files(self, file_keys: list[str], drop_records: bool = False) -> dict[str, dict]:
        """Remove the files' contributions in one session; with `drop_records`, their manifest entries
        go in the same commit (the clean-up of deleted files)."""
        with self._lock, self.session.writer():
            self.rag  # noqa: B018
            with self.session.open():
                out = self.run(self._aremove_many(file_keys))
                self.session.commit(deletes=file_keys if drop_records else ())
            return out

    async def _aremove_many(self, file_keys: list[str]) -> dict[str, dict]:
        async with adapter.persist_deferred(self._rag):
            out = {fk: await self._aremove(fk) for fk in file_keys}
            await self.vectors.flush()
            return out

    def unresolved_refs(self, file_keys) -> dict[str, list[str]]:
        """{file: what of its graph references the stores lack} (files whose references all resolve
        left out): the `lightrag_graph` asset check."""
        async def find():
            rag, out = self.rag, {}
            g = rag.chunk_entity_relation_graph
            for fk in file_keys:
                ents, chunks = self.manifest.graph_refs(fk, "entity"), self.manifest.graph_refs(fk, "chunk")
                lost = [f"entity {e!r}" for e in sorted(set(ents) - await g.has_nodes_batch(ents))]
                lost += [f"chunk {c}" for c in sorted(await rag.text_chunks.filter_keys(set(chunks)))]
                for r in self.manifest.graph_refs(fk, "relation"):
                    a, _, b = r.partition(REL_SEP)
                    if not await g.has_edge(a, b):
                        lost.append(f"relation {a!r} – {b!r}")
                if lost:
                    out[fk] = lost
            return out

        self.refresh()
        return self.run(find())

    def remove_orphans(self, entities, relations, chunks) -> dict:
        """Delete graph items no file holds (the audit's repair), in one write session."""
        async def drop():
            async with adapter.persist_deferred(self._rag):
                ents, pairs = await self._adrop(entities, {tuple(sorted(r)) for r in relations}, sorted(chunks))
                await self.vectors.flush()
            return {"entities": len(ents), "relations": len(pairs), "chunks": len(chunks)}

        with self._lock, self.session.writer():
            self.rag  # noqa: B018
            with self.session.open():
                out = self.run(drop())
                self.session.commit()
            return out

    def stats(self) -> tuple[int, int]:
        """(nodes, edges) of the graph."""
        return self.run(adapter.graph_size(self.rag))

    def query_context(self, question: str, mode: str = "mix", top_k: int = 10, sources=None) -> str:
        """Retrieved context only, no answer. Keyword modes ask the LLM for keywords; without an LLM
        the question itself is used as the high- and low-level keyword. `sources`: only what those
        sources contributed (`_scoped_context`); None = the whole graph."""
        from lightrag import QueryParam
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        if sources is not None:
            return self._scoped_context(question, mode, top_k, set(sources))
        p = QueryParam(mode=mode, only_need_context=True, top_k=top_k, chunk_top_k=top_k, enable_rerank=False)
        self.refresh()
        if mode != "naive" and self.llm is None:
            p.hl_keywords, p.ll_keywords = [question], [question]
        res, model_errors = self.run(adapter.with_model_errors(self.rag.aquery_llm(question, p)))
        if res.get("status") == "failure":
            if model_errors:  # a model server down (no results for want of a vector): the API's 503 "retry"
                raise model_errors[-1]
            if res.get("metadata", {}).get("failure_reason") == "no_results":
                return ""
            raise RuntimeError(res.get("message", "LightRAG query failed"))
        return (res.get("llm_response") or {}).get("content") or ""

    def _scoped_context(self, question: str, mode: str, top_k: int, sources: set[str]) -> str:
        """The graph context of `question` with only what `sources` may see, from LightRAG's retrieval
        data (`aquery_data`), filtered by the manifest's graph references (which files hold each
        entity, relation and chunk) before anything is formatted:
        - an entity or a relation is kept only when every file holding it is in `sources`: LightRAG
          merges the descriptions of every mention, so one from another source would leak its words;
        - a chunk is kept when a file in `sources` holds it (the same text, in a file the caller may read).
        LightRAG retrieves three times `top_k` so that filtering still leaves up to `top_k` of each
        (`mmrag.graph.scope`)."""
        from lightrag import QueryParam

        p = QueryParam(mode=mode, top_k=3 * top_k, chunk_top_k=3 * top_k, enable_rerank=False)
        self.refresh()
        if mode != "naive" and self.llm is None:
            p.hl_keywords, p.ll_keywords = [question], [question]
        res, model_errors = self.run(adapter.with_model_errors(self.rag.aquery_data(question, p)))
        if res.get("status") != "success":
            if model_errors:
                raise model_errors[-1]
            if res.get("metadata", {}).get("failure_reason") == "no_results" or not res.get("data"):
                return ""
            raise RuntimeError(res.get("message", "LightRAG query failed"))
        return scoped_context(res.get("data") or {}, self.manifest, sources, top_k)

    def refresh(self) -> bool:
        """For a reader in another process than the writer: when a write session has committed since
        this process loaded the stores, drop them (without writing anything) so the next use loads
        the newer graph. One SQLite read when nothing changed. Returns whether it reloads."""
        with self._lock:
            if self._rag is None or self.snapshot.active or not self.session.stale():
                return False
            self.run(adapter.close_lightrag(self._rag, self.workspace, write=False))
            self._rag = self.vectors = None
            OPEN.pop(self.workspace, None)
            return True

    async def _aindex_structural(self, fk: str, doc: ParsedDocument, items: list, ids: list[str]) -> dict:
        ents, rels, xrefs, src = build_structural_kg(fk, doc, items)
        self.session.refs.set(fk, "entity", sorted(ents))
        self.session.refs.set(fk, "relation", sorted(REL_SEP.join(k) for k in rels))
        rag = self._rag
        before = dict(zip(ids, await rag.text_chunks.get_by_ids(ids)))
        kg_chunks = [{"content": t, "source_id": src[c.id], "file_path": fk, "chunk_order_index": i}
                     for i, (c, t) in enumerate(items)]
        await rag.ainsert_custom_kg({"chunks": kg_chunks, "entities": list(ents.values()),
                                     "relationships": list(rels.values())}, full_doc_id=lr_doc_id(fk))
        # ainsert_custom_kg rewrites chunk records: keep the LLM-cache links an LLM-indexed sharer needs
        keep = {k: v["llm_cache_list"] for k, v in before.items() if v and v.get("llm_cache_list")}
        if keep:
            now = dict(zip(keep, await rag.text_chunks.get_by_ids(list(keep))))
            await rag.text_chunks.upsert({k: {**now[k], "llm_cache_list": keep[k]} for k in keep if now[k]})
        return {"mode": "structural", "chunks": len(set(ids)), "entities": len(ents), "relations": len(rels),
                "cross_refs": xrefs}

    async def _aindex_llm(self, fk: str, doc: ParsedDocument, items: list, ids: list[str]) -> dict:
        from lightrag.constants import GRAPH_FIELD_SEP
        rag, full, doc_id = self._rag, chunk_text("\n\n".join(t for _, t in items)), lr_doc_id(fk)
        self._pending[full] = [{"content": t, "tokens": TOKENIZER.count(t), "chunk_order_index": i}
                               for i, (_, t) in enumerate(items)]
        try:
            await rag.ainsert(full, ids=[doc_id], file_paths=[fk])
        finally:
            self._pending.pop(full, None)
        st = await rag.doc_status.get_by_id(doc_id) or {}
        if st.get("status") != "processed":  # the pipeline records failures instead of raising
            raise RuntimeError(f"LightRAG could not index {fk}: {st.get('error_msg') or st.get('status')}")
        extracted = list((await rag.full_entities.get_by_id(doc_id) or {}).get("entity_names", []))
        pairs = [tuple(sorted(p)) for p in (await rag.full_relations.get_by_id(doc_id) or {}).get("relation_pairs", [])]
        from_chunk: dict[str, list[str]] = {}
        for name, node in (await rag.chunk_entity_relation_graph.get_nodes_batch(extracted)).items():
            for cid in (node.get("source_id") or "").split(GRAPH_FIELD_SEP):
                from_chunk.setdefault(cid, []).append(name)
        id_of = {c.id: i for (c, _), i in zip(items, ids)}
        chunk_of = {bid: c for c, _ in items for bid in c.block_ids}
        doc_node = bounded_name(fk)
        nodes = {doc_node: {"entity_type": "document", "description": xml_safe(f"Document '{doc.title}' ({doc.rel_path})"),
                            "source_id": ids[0]}}
        edges: dict[tuple[str, str], dict] = {}
        modal = modal_names(fk, doc)
        for b in doc.modal_blocks():
            if (c := chunk_of.get(b.id)) is None:
                continue
            cid, info = id_of[c.id], b.meta.get("entity") or {}
            name = bounded_name(f"{fk} | {info['entity_name']}" if info.get("entity_name") else modal[b.id][0])
            nodes[name] = {"entity_type": xml_safe(str(info.get("entity_type") or b.kind.value))[:64], "source_id": cid,
                           "description": xml_safe(info.get("summary") or b.description or b.searchable_text())}
            edges[(name, doc_node)] = {"keywords": "belongs_to", "description": f"{name} belongs to {doc_node}", "source_id": cid}
            for e in from_chunk.get(cid, []):  # RAG-Anything: entities of its description belong to it
                if e != name:
                    edges[(e, name)] = {"keywords": "belongs_to", "description": f"{e} belongs to {name}", "source_id": cid}
        await self._write_kg(fk, nodes, edges)
        self.session.refs.set(fk, "entity", sorted(set(extracted) | set(nodes)))
        self.session.refs.set(fk, "relation", sorted({REL_SEP.join(sorted(k)) for k in [*pairs, *edges]}))
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
            "content": f"{d['keywords']}\t{min(a, b)}\n{max(a, b)}\n{d['description']}"} for (a, b), d in edges.items()})

    async def _adrop(self, entities, pairs: set[tuple[str, str]], chunks: list[str]) -> tuple[list, set]:
        """Delete nodes (with their edges), edges and chunks from the graph, the KV stores and the
        vector stores; returns the nodes and edges that were there."""
        from lightrag.utils import (
            compute_mdhash_id,
            make_relation_chunk_key,
            make_relation_vdb_ids,
        )
        rag = self._rag
        g = rag.chunk_entity_relation_graph
        ents = sorted(await g.has_nodes_batch(list(entities)))
        pairs = set(pairs)
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
        if chunks:
            await rag.chunks_vdb.delete(list(chunks))
            await rag.text_chunks.delete(list(chunks))
        return ents, pairs

    async def _aremove(self, fk: str) -> dict:
        rag, refs = self._rag, self.session.refs
        others = lambda kind, ref: [h for h in refs.holders(kind, ref) if h != fk]  # noqa: E731
        chunks = set(refs.get(fk, "chunk"))
        shared = {c: h for c in chunks if (h := others("chunk", c))}
        for doc_id in dict.fromkeys([lr_doc_id(fk), fk]):  # the key itself: indexes before hashed ids
            if st := await rag.doc_status.get_by_id(doc_id):  # LLM path: LightRAG deletes and rebuilds
                keep = [c for c in st.get("chunks_list") or [] if c not in shared]
                await rag.doc_status.upsert({doc_id: {**st, "chunks_list": keep, "chunks_count": len(keep)}})
                res = await rag.adelete_by_doc_id(doc_id)
                if res.status not in ("success", "not_found"):
                    raise RuntimeError(f"LightRAG could not delete {fk}: {res.message}")
        mine = [e for e in refs.get(fk, "entity") if not others("entity", e)]
        pairs = {tuple(r.split(REL_SEP)) for r in refs.get(fk, "relation") if not others("relation", r)}
        gone = sorted(chunks - set(shared))
        ents, pairs = await self._adrop(mine, pairs, gone)
        for cid, holders in shared.items():  # a surviving shared chunk now belongs to another file
            rec = await rag.text_chunks.get_by_id(cid)
            if rec and rec.get("full_doc_id") in (fk, lr_doc_id(fk)):
                rec = {k: v for k, v in rec.items() if k != "_id"} | {"full_doc_id": lr_doc_id(holders[0]),
                                                                     "file_path": holders[0]}
                await rag.text_chunks.upsert({cid: rec})
                await rag.chunks_vdb.upsert({cid: rec})
        refs.clear(fk)
        return {"entities": len(ents), "relations": len(pairs), "chunks": len(gone), "kept_shared": len(shared)}


