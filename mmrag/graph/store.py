"""The knowledge graph: one LightRAG instance on the app's Milvus, a NetworkX graph and JSON stores.

No LLM: a structural graph through `ainsert_custom_kg` (document, sections, passages, figures/tables/
equations; "contains" edges; "references" edges from text saying "Figure 3"/"Tab. 2" to the item whose
caption starts so). With an LLM: LightRAG's extraction over *our* chunks (`ainsert` + a chunking function
returning them, so chunk ids stay md5-of-content and doc-status lists them for `adelete_by_doc_id`),
plus an entity per modal item that `belongs_to` the document. Removal follows the manifest and never
deletes what another indexed file also holds. LightRAG's asyncio locks are process-global, so every
GraphStore runs its coroutines on one event-loop thread; the sync API works from any thread.

Writes happen in sessions (`index_files`, `remove_files`), one writer process at a time (a file
lock beside the graph), each crash-safe (`mmrag.graph.txn`): a snapshot when it begins, a journal
of the vectors it touches, and a commit that persists LightRAG's stores and then, in one SQLite
transaction, the manifest's references, the files' statuses and the session's id. A session that
did not commit is rolled back by the next one, in whatever process: nothing it wrote survives.

GraphStore's extraction (units, a session's requests at once and the next session's ahead, the model
function) is in `mmrag.graph.extraction`; its vector writes (held back, journaled, reconciled after a
roll-back) in `mmrag.graph.vectors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Coroutine

import numpy as np

from mmrag.blocks import ParsedDocument
from mmrag.faults import crash_point
from mmrag.graph.extraction import ExtractionMixin
from mmrag.graph.lightrag_adapter import (  # noqa: F401  (chunk_id, chunk_text, lr_doc_id: mmrag.graph.store's API)
    _OPEN,
    _Loop,
    _milvus_env,
    _SharedTokenizer,
    chunk_id,
    chunk_text,
    lr_doc_id,
    workspace_name,
)
from mmrag.graph.scope import REL_SEP, scoped_context
from mmrag.graph.structural import build_structural_kg, modal_names
from mmrag.graph.txn import Snapshot, patch_atomic_writes, write_text_atomic
from mmrag.graph.vectors import VectorJournalMixin
from mmrag.ids import bounded_name, xml_safe
from mmrag.index.chunking import Chunk
from mmrag.manifest import Manifest
from mmrag.models.tokenizer import TOKENIZER

MODES = ("naive", "local", "global", "hybrid", "mix")
WRITER_WAIT_S = 3600.0  # how long a write session waits for another process's session to end


class GraphSessionError(RuntimeError):
    """A write session could not keep LightRAG consistent (it was rolled back)."""


class _Refs:
    """The manifest's graph references as a write session sees them. Reads fall through to the
    manifest; writes stay here until the session commits, so the references on disk always
    describe the graph on disk."""

    def __init__(self, manifest: Manifest):
        self.mf, self.cleared, self.refs = manifest, set(), {}
        self._holding: dict[tuple[str, str], set[str]] = {}  # (kind, ref) -> files holding it here

    def get(self, fk: str, kind: str) -> list[str]:
        if (fk, kind) in self.refs:
            return list(self.refs[(fk, kind)])
        return [] if fk in self.cleared else self.mf.graph_refs(fk, kind)

    def set(self, fk: str, kind: str, values) -> None:
        for r in self.refs.get((fk, kind), []):
            self._holding.get((kind, r), set()).discard(fk)
        self.refs[(fk, kind)] = sorted(set(values))
        for r in self.refs[(fk, kind)]:
            self._holding.setdefault((kind, r), set()).add(fk)

    def clear(self, fk: str) -> None:
        for kind in [k for f, k in self.refs if f == fk]:
            self.set(fk, kind, [])
            del self.refs[(fk, kind)]
        self.cleared.add(fk)

    def holders(self, kind: str, ref: str) -> list[str]:
        out = {fk for fk in self.mf.ref_holders(kind, ref) if (fk, kind) not in self.refs and fk not in self.cleared}
        return sorted(out | self._holding.get((kind, ref), set()))


class GraphStore(ExtractionMixin, VectorJournalMixin):
    def __init__(self, working_dir: Path, milvus_uri: str, milvus_token: str = "", milvus_db: str = "", *,
                 embed_fn: Callable[[list[str]], np.ndarray], embed_dim: int, llm: Any = None,
                 manifest: Manifest, namespace: str = "mmrag_graph", lightrag_kwargs: dict | None = None,
                 unit_tokens: int = 1200):
        self.working_dir = Path(working_dir).expanduser().resolve()
        self.milvus_uri, self.milvus_token, self.milvus_db = str(milvus_uri), milvus_token, milvus_db
        # LightRAG's workspace: Milvus collections "{ws}_entities|_relationships|_chunks", files in working_dir/ws
        self.workspace = workspace_name(namespace)
        self.embed_dim, self.lightrag_kwargs = embed_dim, dict(lightrag_kwargs or {})
        self.unit_tokens = int(unit_tokens)  # extraction units (mmrag.graph.units); 0 = one per chunk
        self._prefailed: dict[str, BaseException] = {}  # files whose extraction failed in a session's first pass
        self._ahead: asyncio.Future | None = None  # the next session's extraction requests (`_extract_ahead`)
        self.rebind(embed_fn, llm, manifest)
        self._lock, self._embed_lock = threading.RLock(), threading.Lock()
        self._pending: dict[str, list[dict]] = {}
        self._known_vectors: dict[str, np.ndarray] = {}
        self._rag = None
        self.snapshot = Snapshot(self.working_dir / self.workspace)
        self._refs: _Refs | None = None  # set during a write session
        self._txn: str | None = None
        self._loaded_txn: str | None = None  # the committed session whose stores this process holds

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
                patch_atomic_writes()
                self._loaded_txn = self.manifest.committed_graph_txn(self.workspace)
                with _milvus_env(self.milvus_uri, self.milvus_token, self.milvus_db):
                    self._rag = self.run(self._aopen())
                self._journal_vector_writes(self._rag)
                # closure, not a bound method (see _aopen); LightRAG calls it for each inserted document
                self._rag._process_extract_entities = lambda chunks, *a: self._extract_units(chunks, *a)
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

    def _chunking(self, tokenizer, content, split_by, split_only, overlap, size):
        if content in self._pending:  # our chunks for the document being inserted
            return self._pending[content]
        from lightrag.operate import chunking_by_token_size
        return chunking_by_token_size(tokenizer, content, split_by, split_only, overlap, size)

    # -- write sessions ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _writer(self):
        """One writing process per graph (a file lock, freed by the OS if the process dies), then
        repair what a session that did not finish left, and reload stores another process committed."""
        lock_path = self.working_dir / f".{self.workspace}.writer.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + WRITER_WAIT_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise GraphSessionError(f"another process kept the graph at {self.working_dir} busy for "
                                                f"{WRITER_WAIT_S:.0f} s") from None
                    time.sleep(0.5)
            self._recover()
            yield
        finally:
            os.close(fd)  # releases the lock

    def _recover(self) -> None:
        self.snapshot.clear_incomplete()
        if self.snapshot.exists:
            txn = self.snapshot.txn
            if txn is not None and self.manifest.committed_graph_txn(self.workspace) == txn:
                self.snapshot.end()  # it committed; only the snapshot was left
            else:
                logging.getLogger(__name__).warning(
                    f"graph {self.workspace}: a write session did not finish; rolling it back")
                self._rollback()
        if self._rag is not None and self.manifest.committed_graph_txn(self.workspace) != self._loaded_txn:
            self._close_rag()  # another process committed since these stores were loaded: reload

    def _begin(self) -> None:
        self.rag  # noqa: B018
        self._txn = self.snapshot.begin()
        self._refs = _Refs(self.manifest)

    def _commit(self, updates: dict[str, dict] | None = None, deletes: list[str] = ()) -> None:
        """Persist LightRAG's stores (each file written aside, then renamed), then the manifest's side
        in one transaction that also records the session as committed; then drop the snapshot."""
        self.run(self._rag._insert_done())
        crash_point("graph-persisted")
        refs = self._refs
        self.manifest.commit_graph(self.workspace, self._txn, refs.cleared, refs.refs, updates, list(deletes))
        crash_point("graph-committed")
        self._loaded_txn = self._txn
        self.snapshot.end()
        self._refs = self._txn = None

    def _rollback(self) -> None:
        """Back to the last commit: drop the in-memory stores, restore the files from the snapshot,
        rewrite or delete every vector the session touched, drop the snapshot (idempotent)."""
        self.run(self._drop_ahead())  # what the next session asked ahead of it goes too
        self._refs = self._txn = None
        for held in getattr(self, "_vector_held", []):  # the session's writes not yet sent: dropped
            held.clear()
        self._close_rag()
        self.snapshot.restore_files()
        journal = self.snapshot.journal()
        self.rag  # noqa: B018  (reopen on the restored files)
        self.run(self._areconcile(journal))
        self.snapshot.end()

    def _close_rag(self) -> None:
        if self._rag is not None:
            with contextlib.suppress(Exception):
                self.run(self._aclose())
            self._rag = None
            _OPEN.pop(self.workspace, None)

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
        with self._lock, self._writer():
            self._known_vectors = {chunk_text(t): np.asarray(v, dtype=np.float32) for t, v in (known_vectors or {}).items()}
            step = max(1, persist_every)
            try:
                for start in range(0, len(batch), step):
                    part, after = batch[start: start + step], batch[start + step: start + 2 * step]
                    self._begin()
                    try:
                        done = self.run(self._aindex_many(part, after))
                        self._commit(on_commit(done) if on_commit else None)
                    except BaseException:
                        self._rollback()
                        raise
                    results.update(done)
            finally:
                self._known_vectors = {}
                self.run(self._drop_ahead())
            nodes, edges = self.stats()
        for r in results.values():
            if isinstance(r, dict):
                r["nodes"], r["edges"] = nodes, edges
        return results

    def _llm_identity(self) -> str:
        return f"{getattr(self.llm, 'base_url', '')}|{getattr(self.llm, 'model', type(self.llm).__name__)}"

    async def _cache_for_current_llm(self) -> None:
        """LightRAG keys its LLM response cache by prompt alone: after a model change it would hand
        back the old model's extractions. The model that filled the cache is noted in the graph's
        folder (so a session's roll-back restores it with the cache); when another model extracts,
        the cache is dropped first."""
        if self.llm is None:
            return
        marker = self.snapshot.ws_dir / "mmrag-llm-cache-model"
        legacy = self.working_dir / f"{self.workspace}.llm-cache-model"
        ident = self._llm_identity()
        old = next((p.read_text(encoding="utf-8") for p in (marker, legacy) if p.exists()), None)
        if old == ident and marker.exists():
            return
        if old is not None and old != ident:
            await self._rag.llm_response_cache.drop()
        marker.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(marker, ident)

    async def _aindex_many(self, batch, after=()) -> dict:
        """One session's files; `after`: the next session's, whose extractions are asked for while
        this session merges and embeds (`_extract_ahead`)."""
        await self._cache_for_current_llm()
        results: dict[str, dict | Exception] = {}
        async with self._persist_deferred():
            await self._prefetch_extractions(batch, await self._take_ahead())
            if after and self.llm is not None:
                self._ahead = asyncio.ensure_future(self._extract_ahead(after))
            for fk, doc, chunks in batch:
                try:
                    results[fk] = await self._aindex_one(fk, doc, chunks)
                except GraphSessionError:
                    raise
                except Exception as e:  # one file's failure must not stop the others
                    results[fk] = e
            await self._flush_vectors()
        return results

    async def _aindex_one(self, fk: str, doc: ParsedDocument, chunks: list[Chunk]) -> dict:
        await self._aremove(fk)
        t0 = time.perf_counter()
        items = [(c, t) for c in chunks if (t := chunk_text(c.text))]
        if not items:
            return {"mode": "none", "chunks": 0, "entities": 0, "relations": 0}
        ids = [chunk_id(t) for _, t in items]
        self._refs.set(fk, "doc", [lr_doc_id(fk)])  # before writing: a failure can clean up
        self._refs.set(fk, "chunk", ids)
        try:
            if (failed := self._prefailed.pop(fk, None)) is not None:
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

    @contextlib.asynccontextmanager
    async def _persist_deferred(self):
        """Within the block, LightRAG's per-operation `_insert_done` (persist every store) does
        nothing; the session's commit persists once."""
        rag = self._rag

        async def deferred(*_a, **_k) -> None:
            return None

        rag._insert_done = deferred  # shadows the bound method on this instance only
        try:
            yield
        finally:
            del rag._insert_done

    def remove_file(self, file_key: str) -> dict:
        """Remove what this file alone contributed; idempotent, a no-op for an unknown file."""
        return self.remove_files([file_key])[file_key]

    def remove_files(self, file_keys: list[str], drop_records: bool = False) -> dict[str, dict]:
        """Remove the files' contributions in one session; with `drop_records`, their manifest entries
        go in the same commit (the clean-up of deleted files)."""
        with self._lock, self._writer():
            self._begin()
            try:
                out = self.run(self._aremove_many(file_keys))
                self._commit(deletes=file_keys if drop_records else ())
            except BaseException:
                self._rollback()
                raise
            return out

    async def _aremove_many(self, file_keys: list[str]) -> dict[str, dict]:
        async with self._persist_deferred():
            out = {fk: await self._aremove(fk) for fk in file_keys}
            await self._flush_vectors()
            return out

    def stats(self) -> tuple[int, int]:
        """(nodes, edges) of the graph."""
        self.rag  # noqa: B018
        return self.run(self._astats())

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
        res = self.run(self.rag.aquery_llm(question, p))
        if res.get("status") == "failure":
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
        res = self.run(self.rag.aquery_data(question, p))
        if res.get("status") != "success":
            if res.get("metadata", {}).get("failure_reason") == "no_results" or not res.get("data"):
                return ""
            raise RuntimeError(res.get("message", "LightRAG query failed"))
        return scoped_context(res.get("data") or {}, self.manifest, sources, top_k)

    def refresh(self) -> bool:
        """For a reader in another process than the writer: when a write session has committed since
        this process loaded the stores, drop them (without writing anything) so the next use loads
        the newer graph. One SQLite read when nothing changed. Returns whether it reloads."""
        with self._lock:
            if self._rag is None or self.snapshot.active:
                return False
            if self.manifest.committed_graph_txn(self.workspace) == self._loaded_txn:
                return False
            self.run(self._adrop())
            self._rag = None
            _OPEN.pop(self.workspace, None)
            return True

    async def _adrop(self) -> None:
        """Forget the in-memory stores: vector stores close their clients, nothing is persisted (a
        reader's LLM cache must not overwrite the writer's file)."""
        rag = self._rag
        for vdb in (rag.entities_vdb, rag.relationships_vdb, rag.chunks_vdb):
            with contextlib.suppress(Exception):
                await vdb.finalize()
        from lightrag.kg import shared_storage as ss
        for d in (ss._shared_dicts, ss._init_flags, ss._update_flags):
            for k in [k for k in (d or {}) if k.startswith(self.workspace + ":")]:
                d.pop(k, None)

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
        self._refs.set(fk, "entity", sorted(ents))
        self._refs.set(fk, "relation", sorted(REL_SEP.join(k) for k in rels))
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
        self._refs.set(fk, "entity", sorted(set(extracted) | set(nodes)))
        self._refs.set(fk, "relation", sorted({REL_SEP.join(sorted(k)) for k in [*pairs, *edges]}))
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

    async def _aremove(self, fk: str) -> dict:
        from lightrag.utils import (
            compute_mdhash_id,
            make_relation_chunk_key,
            make_relation_vdb_ids,
        )
        rag, refs = self._rag, self._refs
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
        g = rag.chunk_entity_relation_graph
        mine = [e for e in refs.get(fk, "entity") if not others("entity", e)]
        ents = sorted(await g.has_nodes_batch(mine))
        pairs = {tuple(r.split(REL_SEP)) for r in refs.get(fk, "relation") if not others("relation", r)}
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
            if rec and rec.get("full_doc_id") in (fk, lr_doc_id(fk)):
                rec = {k: v for k, v in rec.items() if k != "_id"} | {"full_doc_id": lr_doc_id(holders[0]),
                                                                     "file_path": holders[0]}
                await rag.text_chunks.upsert({cid: rec})
                await rag.chunks_vdb.upsert({cid: rec})
        refs.clear(fk)
        return {"entities": len(ents), "relations": len(pairs), "chunks": len(gone), "kept_shared": len(shared)}


