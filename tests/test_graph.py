"""GraphStore against real LightRAG storages: NetworkX + JSON on disk, Milvus Lite, MiniLM embeddings."""

from __future__ import annotations

import os
import threading

import pytest
from graph_tools import (
    SCRIPT,
    SHARED,
    Embedder,
    ScriptedLLM,
    edge,
    files_of,
    milvus_ids,
    minilm_embed_fn,
    nodes_of,
    open_store,
    paper,
)

from mmrag.graph.store import GraphStore, chunk_id
from mmrag.index.chunking import chunk_document
from mmrag.manifest import Manifest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def embed_fn():
    return minilm_embed_fn()


@pytest.fixture
def store(tmp_path, embed_fn):
    s = open_store(tmp_path, embed_fn)
    yield s
    s.close()



def test_structural_graph_with_cross_references(store):
    fk = "s:paper.md"
    doc = paper(fk, "Flow grows with pump speed.")
    chunks = chunk_document(doc)
    stats = store.index_file(fk, doc, chunks)
    assert stats["mode"] == "structural" and stats["cross_refs"] == 2
    assert (stats["nodes"], stats["edges"]) == store.stats()

    nodes = nodes_of(store)
    fig, tab = f"{fk} | Figure 1", f"{fk} | Table 2"
    assert {fk, f"{fk} § Design", f"{fk} § Safety", f"{fk} § Results", fig, tab} <= nodes
    mention = next(c for c in chunks if "as shown in Figure 1" in c.text)
    passage = f"{fk} ¶ {mention.id}"
    assert passage in nodes
    assert "references" in edge(store, passage, fig)["keywords"]  # "Figure 1" -> the figure
    assert "references" in edge(store, passage, tab)["keywords"]  # "Tab. 2" -> the table
    assert edge(store, f"{fk} § Design", fig)["keywords"] == "contains"
    assert edge(store, fk, f"{fk} § Safety")["keywords"] == "contains"
    # manifest bookkeeping matches what the graph holds
    assert set(store.manifest.graph_refs(fk, "entity")) == nodes
    assert set(store.manifest.graph_refs(fk, "chunk")) == {chunk_id(c.text) for c in chunks}
    # entities and chunks are in Milvus, and retrieval sees them
    from lightrag.utils import compute_mdhash_id

    assert milvus_ids(store, store.rag.entities_vdb, [compute_mdhash_id(fig, prefix="ent-")])
    assert len(milvus_ids(store, store.rag.chunks_vdb, [chunk_id(c.text) for c in chunks])) == len(chunks)
    assert "Pump layout" in store.query_context("diagram of the pumps", mode="naive", top_k=3)
    assert "Figure 1" in store.query_context("pump layout figure", mode="local", top_k=5)


def test_reindex_is_idempotent_and_works_from_threads(store):
    fk = "s:paper.md"
    doc = paper(fk, "Flow grows with pump speed.")
    chunks = chunk_document(doc)
    first = store.index_file(fk, doc, chunks)
    out = {}
    t = threading.Thread(target=lambda: out.update(store.index_file(fk, doc, chunks)))  # as a Dagster step would
    t.start()
    t.join()
    assert (out["nodes"], out["edges"]) == (first["nodes"], first["edges"]) == store.stats()
    assert set(store.manifest.graph_refs(fk, "entity")) == nodes_of(store)
    assert len(milvus_ids(store, store.rag.chunks_vdb, [chunk_id(c.text) for c in chunks])) == len(chunks)


def test_remove_keeps_chunks_another_file_shares(store):
    a, b = "s:a.md", "s:b.md"
    doc_a, doc_b = paper(a, "Alpha only paragraph about turbines."), paper(b, "Beta only paragraph about valves.")
    ch_a, ch_b = chunk_document(doc_a), chunk_document(doc_b)
    shared = chunk_id(next(c.text for c in ch_a if SHARED in c.text))
    only_a = chunk_id(next(c.text for c in ch_a if "Alpha" in c.text))
    assert shared in {chunk_id(c.text) for c in ch_b}

    store.index_file(b, doc_b, ch_b)
    b_alone = store.stats()
    b_nodes = nodes_of(store)
    store.index_file(a, doc_a, ch_a)
    assert store.stats()[0] == 2 * b_alone[0]
    assert set(store.manifest.ref_holders("chunk", shared)) == {a, b}

    removed = store.remove_file(a)
    assert removed["kept_shared"] >= 1
    assert store.stats() == b_alone  # counts drop by exactly a's contributions
    assert nodes_of(store) == b_nodes
    assert not any(n.startswith(a) for n in nodes_of(store))
    rec = store.run(store.rag.text_chunks.get_by_id(shared))
    assert rec and SHARED in rec["content"] and rec["full_doc_id"] == b
    assert milvus_ids(store, store.rag.chunks_vdb, [shared, only_a]) == {shared}
    from lightrag.utils import compute_mdhash_id

    ent_ids = {compute_mdhash_id(n, prefix="ent-"): n for n in (a, b, f"{a} § Design", f"{b} § Design")}
    assert {ent_ids[i] for i in milvus_ids(store, store.rag.entities_vdb, ent_ids)} == {b, f"{b} § Design"}
    assert store.run(store.rag.text_chunks.get_by_id(only_a)) is None
    assert store.manifest.graph_refs(a, "entity") == [] and store.manifest.ref_holders("chunk", shared) == [b]

    store.remove_file(a)  # idempotent
    store.remove_file("s:never-indexed.md")  # unknown file: no error
    assert store.stats() == b_alone
    store.remove_file(b)
    assert store.stats() == (0, 0)
    assert milvus_ids(store, store.rag.chunks_vdb, [shared]) == set()


def test_reopen_reads_from_disk(tmp_path, embed_fn):
    fk = "s:paper.md"
    doc = paper(fk, "Flow grows with pump speed.")
    s = open_store(tmp_path, embed_fn)
    counts = s.index_file(fk, doc, chunk_document(doc))
    s.close()
    again = GraphStore(s.working_dir, s.milvus_uri, embed_fn=embed_fn, embed_dim=384, manifest=s.manifest,
                       namespace=s.workspace)
    try:
        assert again.stats() == (counts["nodes"], counts["edges"])
        assert "Pump layout" in again.query_context("pump layout", mode="naive", top_k=3)
        again.remove_file(fk)
        assert again.stats() == (0, 0)
    finally:
        again.close()


def test_llm_extraction_and_removal(tmp_path, embed_fn):
    llm = ScriptedLLM(SCRIPT)
    s = open_store(tmp_path, embed_fn, llm=llm)
    a, b = "s:a.md", "s:b.md"
    try:
        doc_a = paper(a, "Alpha only paragraph about turbines.")
        doc_a.blocks[2].meta["entity"] = {"entity_name": "Pump Diagram", "entity_type": "image",
                                          "summary": "Three pumps feed one heat exchanger."}
        doc_b = paper(b, "Beta only paragraph about valves.")
        st_a = s.index_file(a, doc_a, chunk_document(doc_a))
        s.index_file(b, doc_b, chunk_document(doc_b))
        assert st_a["mode"] == "llm" and llm.calls > 0
        nodes = nodes_of(s)
        assert {"Acme Pump", "Turbine Hall", "Valve Bank", "Heat Exchanger", a, b, f"{a} | Pump Diagram"} <= nodes
        assert edge(s, f"{a} | Pump Diagram", a)["keywords"] == "belongs_to"  # modal item -> document
        assert "belongs_to" in edge(s, "Heat Exchanger", f"{a} | Pump Diagram")["keywords"]  # from its description
        assert edge(s, "Acme Pump", "Turbine Hall")
        assert {"Acme Pump", "Turbine Hall"} <= set(s.manifest.graph_refs(a, "entity"))
        assert "Acme Pump" in s.query_context("Which pumps are there?", mode="local", top_k=5)
        calls, counts = llm.calls, s.stats()
        s.index_file(a, doc_a, chunk_document(doc_a))  # re-index: same graph, extraction from LightRAG's cache
        assert (llm.calls, s.stats(), nodes_of(s)) == (calls, counts, nodes)
        other = ScriptedLLM(SCRIPT)
        other.model = "another-model"  # a model change: LightRAG's prompt-keyed cache must not answer for it
        s.rebind(s.embed_fn, other, s.manifest)
        s.index_file(a, doc_a, chunk_document(doc_a))
        assert other.calls > 0 and nodes_of(s) == nodes
        # The model is in the fingerprint: every file is stale and re-extracted, b too (which refills the
        # cache LightRAG rebuilds b's entities from when a is removed).
        s.index_file(b, doc_b, chunk_document(doc_b))
        s.rebind(s.embed_fn, llm, s.manifest)

        s.remove_file(a)
        after = nodes_of(s)
        assert "Turbine Hall" not in after and f"{a} | Pump Diagram" not in after and a not in after
        assert {"Acme Pump", "Valve Bank", "Heat Exchanger", b} <= after  # b's chunks still support them
        assert edge(s, "Acme Pump", "Turbine Hall") is None
        node = s.run(s.rag.chunk_entity_relation_graph.get_node("Acme Pump"))
        b_chunks = set(s.manifest.graph_refs(b, "chunk"))
        assert set(node["source_id"].split("<SEP>")) <= b_chunks  # rebuilt from b's chunks only
        s.remove_file(b)
        assert s.stats() == (0, 0)
        assert s.run(s.rag.doc_status.get_by_id(b)) is None
    finally:
        s.close()


def test_resource_builds_one_store_per_config(tmp_path, monkeypatch, embed_fn):
    from mmrag.graph.lightrag_adapter import graph_counts
    from mmrag_resources.lightrag import LightRAGResource, close_stores

    monkeypatch.setenv("MMRAG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MMRAG_COLLECTION_PREFIX", "rtest")
    for var in ("MMRAG_MILVUS_URI", "MILVUS_URI", "MILVUS_DB_NAME"):
        monkeypatch.delenv(var, raising=False)
    res, manifest = LightRAGResource(), Manifest(tmp_path / "state.sqlite")
    try:
        text = Embedder(embed_fn)
        store = res.store(text, None, manifest)
        assert res.store(text, None, Manifest(tmp_path / "state.sqlite")) is store  # cached per process
        assert store.working_dir == (tmp_path / "home" / "lightrag").resolve()
        assert store.milvus_uri == str((tmp_path / "home" / "milvus.db").resolve())
        doc = paper("s:paper.md", "Flow grows with pump speed.")
        store.index_file("s:paper.md", doc, chunk_document(doc))
        assert store.rag.chunks_vdb.final_namespace == "rtest_graph_chunks"  # same Milvus, own collections
        assert "MILVUS_URI" not in os.environ and "MILVUS_DB_NAME" not in os.environ  # env window restored
        assert graph_counts(store.working_dir) == graph_counts(store.working_dir, "rtest_graph") == store.stats()
        monkeypatch.setenv("MMRAG_HOME", str(tmp_path / "home2"))  # another configuration, same workspace
        other = res.store(text, None, manifest)
        assert other is not store and store._rag is None and other.stats() == (0, 0)
    finally:
        close_stores()


def _vector_ids(s) -> dict[str, set[str]]:
    from mmrag.index.milvus_store import connect

    client = connect(s.milvus_uri)
    out = {}
    for ns in ("entities", "relationships", "chunks"):
        name = f"{s.workspace}_{ns}"
        client.load_collection(name)
        out[ns] = {r["id"] for r in client.query(name, filter="", output_fields=["id"], limit=16384)}
    return out


def test_a_session_that_fails_to_commit_is_rolled_back(store):
    """A session is all or nothing: its LightRAG files, vectors and manifest references go back to the
    last commit when it fails, here in its commit (as a full disk or a dead database would)."""
    a, b = "s:a.md", "s:b.md"
    store.index_file(a, paper(a, "Alpha only paragraph about turbines."), chunk_document(paper(a, "Alpha only paragraph about turbines.")))
    before = (nodes_of(store), _vector_ids(store), files_of(store), store.manifest.graph_refs(a, "chunk"))
    doc_b = paper(b, "Beta only paragraph about valves.")

    def refuse(done):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        store.index_files([(b, doc_b, chunk_document(doc_b))], on_commit=refuse)
    assert not store.snapshot.exists
    assert (nodes_of(store), _vector_ids(store), files_of(store), store.manifest.graph_refs(a, "chunk")) == before
    assert store.manifest.graph_refs(b, "chunk") == []
    store.index_file(b, doc_b, chunk_document(doc_b))  # and the store works on
    assert b in nodes_of(store)


def test_a_session_left_by_a_dead_process_is_rolled_back_by_the_next(tmp_path, embed_fn):
    """What a killed writer leaves (its snapshot, files it persisted, vectors it wrote, no commit) is
    undone by the next session, in another GraphStore."""
    a, b = "s:a.md", "s:b.md"
    s = open_store(tmp_path, embed_fn)
    s.index_file(a, paper(a, "Alpha only paragraph about turbines."), chunk_document(paper(a, "Alpha only paragraph about turbines.")))
    before = (nodes_of(s), _vector_ids(s), files_of(s))
    doc_b = paper(b, "Beta only paragraph about valves.")
    with s._lock:  # a session that persists and then dies before its commit
        s.rag  # noqa: B018
        s.session.begin()
        s.run(s._aindex_many([(b, doc_b, chunk_document(doc_b))]))
        s.persist()
    assert b in nodes_of(s) and files_of(s) != before[2]
    s.snapshot.close()  # the process dies: its snapshot and journal stay on disk
    s.close()
    again = GraphStore(s.working_dir, s.milvus_uri, embed_fn=embed_fn, embed_dim=384, manifest=s.manifest,
                       namespace=s.workspace, lightrag_kwargs={"entity_extract_max_gleaning": 0})
    try:
        again.remove_files([])  # any session repairs first
        assert (nodes_of(again), _vector_ids(again), files_of(again)) == before
        assert not again.snapshot.exists
    finally:
        again.close()


def test_a_model_server_down_during_a_graph_query_raises_its_model_error(tmp_path, embed_fn):
    """LightRAG turns a failed embedding call into a "failure" status with its text; the store raises
    the model error itself, so the API can answer 503 "retry" (not 500) while a model server restarts."""
    from mmrag.models.llm import LLMError

    down = {"now": False}

    def flaky(texts):
        if down["now"]:
            raise LLMError("embeddings to http://127.0.0.1:9/v1 failed after 4 attempts: connection error",
                           retryable=True)
        return embed_fn(texts)

    s = open_store(tmp_path, flaky)
    try:
        fk = "s:paper.md"
        doc = paper(fk, "Flow grows with pump speed.")
        s.index_file(fk, doc, chunk_document(doc))
        assert "pump" in s.query_context("pump speed", mode="naive", top_k=3).lower()
        down["now"] = True
        for sources in (None, ["s"]):
            with pytest.raises(LLMError) as err:
                s.query_context("pump speed", mode="naive", top_k=3, sources=sources)
            assert err.value.retryable
        down["now"] = False
        assert "pump" in s.query_context("pump speed", mode="naive", top_k=3, sources=["s"]).lower()
    finally:
        s.close()


def test_lightrag_allows_a_model_call_what_our_clients_allow(mmrag_env, embed_fn, monkeypatch):
    """LightRAG's own limit on a model or embedding call sits past our clients' (timeout × tries, which
    report their own failures): its 30 s default for embeddings failed a graph step whose entities waited
    behind other batches of the in-process embedder on a busy machine."""
    from graph_tools import Embedder

    from mmrag.config import Settings
    from mmrag.models import factory

    monkeypatch.setenv("MMRAG_LLM_TIMEOUT_S", "50")
    monkeypatch.setenv("MMRAG_LLM_RETRIES", "2")
    s = Settings.from_env()
    store = factory.graph_store(s, text_embedder=Embedder(embed_fn), llm=None, manifest=Manifest(s.state_path))
    try:
        rag = store.rag
        assert rag.default_embedding_timeout >= 150 and rag.default_llm_timeout >= 150
    finally:
        factory.close_graph_stores()
