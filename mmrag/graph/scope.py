"""The graph context a caller scoped to some sources may see, from LightRAG's retrieval data.

LightRAG has no filters, so its retrieval (`aquery_data`) is filtered here by the manifest's graph
references (which files hold each entity, relation and chunk) before anything is formatted:
- an entity or a relation is kept only when every file holding it is in the caller's sources:
  LightRAG merges the descriptions of every mention, so one from another source would leak its words;
- a chunk is kept when a file of those sources holds it (the same text, in a file the caller may read).
The result reads like LightRAG's own context (JSON lines per section), with mmrag's lineage as file paths.
"""

from __future__ import annotations

import json

GRAPH_SEP = "<SEP>"  # LightRAG's separator of merged values (lightrag.constants.GRAPH_FIELD_SEP)
REL_SEP = "\x1f"  # manifest ref of a relation: "src\x1ftgt", endpoints sorted


def relation_ref(src: str, tgt: str) -> str:
    return REL_SEP.join(sorted((src, tgt)))


def scoped_context(data: dict, manifest, sources: set[str], top_k: int) -> str:
    """`data` (aquery_data's "data") with only what `sources` may see, up to `top_k` of each kind;
    "" when nothing is left. `manifest` answers which files hold a graph item (one read per kind)."""
    ents_in, rels_in, chunks_in = (data.get(k) or [] for k in ("entities", "relationships", "chunks"))
    held = {"entity": manifest.ref_holders_many("entity", [e.get("entity_name", "") for e in ents_in]),
            "relation": manifest.ref_holders_many(
                "relation", [relation_ref(r.get("src_id", ""), r.get("tgt_id", "")) for r in rels_in]),
            "chunk": manifest.ref_holders_many("chunk", [c.get("chunk_id", "") for c in chunks_in])}

    def all_in(files: list[str]) -> bool:
        return bool(files) and all(f.partition(":")[0] in sources for f in files)

    ents, rels, chunks = [], [], []
    for e in ents_in:
        files = held["entity"].get(e.get("entity_name", ""), [])
        if all_in(files) and len(ents) < top_k:
            ents.append({"entity": e["entity_name"], "type": e.get("entity_type", ""),
                         "description": e.get("description", ""), "file_path": GRAPH_SEP.join(files)})
    for r in rels_in:
        a, b = sorted((r.get("src_id", ""), r.get("tgt_id", "")))
        files = held["relation"].get(relation_ref(a, b), [])
        if all_in(files) and len(rels) < top_k:
            rels.append({"entity1": a, "entity2": b, "description": r.get("description", ""),
                         "file_path": GRAPH_SEP.join(files)})
    refs: dict[str, int] = {}
    for c in chunks_in:
        mine = [f for f in held["chunk"].get(c.get("chunk_id", ""), []) if f.partition(":")[0] in sources]
        if mine and len(chunks) < top_k:
            n = refs.setdefault(mine[0], len(refs) + 1)
            chunks.append({"reference_id": str(n), "content": c.get("content", "")})
    if not (ents or rels or chunks):
        return ""
    ref_list = "\n".join(f"[{n}] {f}" for f, n in refs.items())
    return (f"Knowledge Graph Data (Entity):\n\n```json\n{_lines(ents)}\n```\n\n"
            f"Knowledge Graph Data (Relationship):\n\n```json\n{_lines(rels)}\n```\n\n"
            f"Document Chunks (Each entry has a reference_id refer to the `Reference Document List`):\n\n"
            f"```json\n{_lines(chunks)}\n```\n\nReference Document List:\n\n```\n{ref_list}\n```\n")


def _lines(items: list[dict]) -> str:
    return "\n".join(json.dumps(i, ensure_ascii=False) for i in items)
