"""The graph's extraction against real LightRAG: gleaning as a setting, extraction units (a unit of
consecutive chunks per request, entities mapped back to their chunks, an edit re-extracting only the
units it changed), and the next session's requests asked ahead of it."""

from __future__ import annotations

import os
import uuid

import pytest
from graph_tools import (
    SCRIPT,
    Embedder,
    ScriptedLLM,
    edge,
    files_of,
    make_doc,
    minilm_embed_fn,
    nodes_of,
    open_store,
    paper,
)

from mmrag.blocks import BlockKind, ParsedDocument
from mmrag.graph.store import GraphStore, chunk_id
from mmrag.index.chunking import chunk_document
from mmrag.manifest import Manifest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
T, X = BlockKind.TITLE, BlockKind.TEXT


@pytest.fixture(scope="module")
def embed_fn():
    return minilm_embed_fn()


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
        store = LightRAGResource().store(Embedder(embed_fn), llm, Manifest(tmp_path / "state.sqlite"))
        doc = paper("s:paper.md", "The turbines hum beside the sodium loop.")
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
    return make_doc(fk, [(T, "Plant log", "Plant log", ""), *[(X, "Plant log", p, "") for p in paragraphs]])


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
        rel = edge(s, "Acme Pump", "Turbine Hall")
        assert set(rel["source_id"].split("<SEP>")) == named("Acme Pump") & named("Turbine Hall")
        assert {"Acme Pump", "Turbine Hall", "Valve Bank"} <= set(s.manifest.graph_refs("s:log.md", "entity"))
        # Each member chunk has an alias of its unit's cached extractions (LightRAG rebuilds from
        # them): the reply and the chunk, not the 14 KB prompt again.
        cache = s.rag.llm_response_cache
        listed = [k for t in set(texts) for k in s.run(s.rag.text_chunks.get_by_id(chunk_id(t)))["llm_cache_list"]]
        aliases = [a for a in s.run(cache.get_by_ids(listed)) if a]
        assert len(aliases) == len(listed) == 2 * len(set(texts))  # extract + glean per member chunk
        assert all(a["return"] and "original_prompt" not in a for a in aliases)
        s.remove_file("s:log.md")
        assert not {"Acme Pump", "Turbine Hall", "Valve Bank"} & nodes_of(s) and s.stats() == (0, 0)
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
    s = open_store(tmp_path, embed_fn, llm=llm)
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
        assert "Acme Pump" in nodes_of(s) and "Valve Bank" in nodes_of(s)
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
        (fk, paper(fk, f"{word} only paragraph about {topic}.")) for fk, word, topic in (
            ("s:a.md", "Alpha", "turbines"), ("s:b.md", "Beta", "valves"), ("s:c.md", "Gamma", "boilers")))]


def test_the_next_sessions_extractions_are_asked_while_this_session_merges(tmp_path, embed_fn):
    """Sessions of one file each: the next session's extraction requests go out before this session
    commits (the model server works while this session merges and embeds), each unit is asked once,
    and a file whose requests failed ahead fails in its own session without being asked again."""
    timeline: list[str] = []
    llm = _RecordingLLM(SCRIPT, timeline, fail={"Gamma"})
    s = open_store(tmp_path, embed_fn, llm=llm)
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
        assert {"Turbine Hall", "Valve Bank", "s:a.md", "s:b.md"} <= nodes_of(s) and "s:c.md" not in nodes_of(s)
        assert not s.extractor.asking_ahead
    finally:
        s.close()


def test_a_rolled_back_session_drops_what_was_asked_ahead_for_the_next(tmp_path, embed_fn):
    """The next session's replies are kept aside until it begins: when this session rolls back they
    go with it (LightRAG's cache holds nothing of them), and the next run asks again."""
    timeline: list[str] = []
    llm = _RecordingLLM(SCRIPT, timeline)
    s = open_store(tmp_path, embed_fn, llm=llm)
    try:
        def refuse(done):
            raise OSError("disk full")

        papers = _three_papers()[:2]
        with pytest.raises(OSError, match="disk full"):
            s.index_files(papers, persist_every=1, on_commit=refuse)
        assert timeline == ["extract Alpha", "extract Beta"] and not s.extractor.asking_ahead
        assert not any(b"Beta only" in data for data in files_of(s).values())  # nor of Alpha's session
        assert nodes_of(s) == set()
        results = s.index_files(papers, persist_every=1)
        assert all(isinstance(r, dict) for r in results.values()), results
        assert timeline.count("extract Beta") == 2 and {"Turbine Hall", "Valve Bank"} <= nodes_of(s)
    finally:
        s.close()
