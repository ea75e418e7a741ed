"""The structural knowledge graph of one document, built without an LLM (pure; no LightRAG needed).

Entities: the document (named by its file key), its sections, one passage per chunk that carries no
modal item (for audio and video: one per transcript window), and each figure/table/equation/video
frame. Relations: "contains" down that tree, "references" from text that says "Figure 3" / "Tab. 2" /
"Eq. 1" to the item whose caption starts with that label, and "shown during" from a video frame to
the transcript window(s) whose time range holds the frame's timestamp.
"""

from __future__ import annotations

import re

from mmrag.blocks import ParsedDocument
from mmrag.ids import bounded_name, xml_safe
from mmrag.index.chunking import Chunk

_LABEL = r"(fig(?:ure)?|tab(?:le)?|eq(?:uation)?)\.?\s*\(?(\d+[a-z]?)\b"
_MENTION, _CAPTION = re.compile(r"\b" + _LABEL, re.I), re.compile(r"^\s*" + _LABEL, re.I)
_KIND_NAME = {"f": "Figure", "t": "Table", "e": "Equation"}


def _lead(text: str, limit: int = 200) -> str:
    """The first sentence or `limit` characters of a text."""
    text = " ".join(text.split())
    cut = text.find(". ", 40, limit)
    return text[: cut + 1] if cut > 0 else text[:limit]


def _label(m: re.Match) -> str:
    return f"{_KIND_NAME[m.group(1)[0].lower()]} {m.group(2).upper()}"


def modal_names(fk: str, doc: ParsedDocument) -> dict[str, tuple[str, str]]:
    """block id -> (entity name unique in the file, caption label such as 'Figure 3' or '')."""
    out: dict[str, tuple[str, str]] = {}
    for b in doc.modal_blocks():
        label = _label(m) if (m := _CAPTION.match(b.caption or "")) else ""
        name = bounded_name(f"{fk} | {label}" if label else f"{fk} | {b.kind.value} {b.id}")
        out[b.id] = (name if name not in {n for n, _ in out.values()} else bounded_name(f"{name} ({b.id})"), label)
    return out


def build_structural_kg(fk: str, doc: ParsedDocument, items: list[tuple[Chunk, str]]):
    """(entities by name, relations by sorted endpoint pair, cross-reference count, custom-KG source
    key per chunk id) for LightRAG's `ainsert_custom_kg`."""
    src = {c.id: f"{fk}#{c.id}" for c, _ in items}  # custom-KG source keys, mapped to chunk ids by LightRAG
    ents: dict[str, dict] = {}
    rels: dict[tuple[str, str], dict] = {}

    def ent(name: str, etype: str, desc: str, c: Chunk) -> None:
        ents[name] = {"entity_name": name, "entity_type": etype, "description": xml_safe(desc.strip()[:4000]) or name,
                      "source_id": src[c.id], "file_path": fk}

    def rel(a: str, b: str, kw: str, c: Chunk) -> None:
        rels[tuple(sorted((a, b)))] = {"src_id": a, "tgt_id": b, "keywords": kw, "description": f"{a} {kw} {b}",
                                       "source_id": src[c.id], "file_path": fk, "weight": 1.0}

    sections = {}
    for c, _ in items:
        sections.setdefault(c.section, c)
    sections.pop("", None)
    doc_name = bounded_name(fk)
    parent = {"": doc_name, **{s: bounded_name(f"{fk} § {s}") for s in sections}}
    ent(doc_name, "document", f"Document '{doc.title}' ({doc.rel_path}). Sections: " + "; ".join(sections), items[0][0])
    for s, c in sections.items():
        ent(parent[s], "section", f"Section '{s}' of '{doc.title}'", c)
        rel(doc_name, parent[s], "contains", c)
    chunk_of: dict[str, Chunk] = {}  # block id -> its first chunk
    for c, _ in items:
        for bid in c.block_ids:
            chunk_of.setdefault(bid, c)
    modal = modal_names(fk, doc)
    owner: dict[str, str] = {}  # chunk id -> the entity that stands for it
    for b in doc.modal_blocks():
        if (c := chunk_of.get(b.id)) is not None:
            ent(modal[b.id][0], b.kind.value, b.description or b.searchable_text(), c)
            rel(parent.get(b.section, doc_name), modal[b.id][0], "contains", c)
            for c2, _ in items:  # a long table's later windows stand for the same table
                if b.id in c2.block_ids:
                    owner.setdefault(c2.id, modal[b.id][0])
    for c, t in items:
        if c.id not in owner:
            owner[c.id] = bounded_name(f"{fk} ¶ {c.id}")
            # A passage stands for its chunk in the graph; the chunk itself carries the full text,
            # so the entity's description (embedded once more by LightRAG) stays short.
            ent(owner[c.id], "passage", _lead(t), c)
            rel(parent.get(c.section, doc_name), owner[c.id], "contains", c)
    windows = [(c, owner[c.id]) for c, _ in items if c.modality == "transcript" and c.t_start is not None]
    for b in doc.modal_blocks():  # a video's frame → the transcript window(s) it falls in
        if b.t_start is not None and modal[b.id][0] in ents:
            for c, name in windows:
                if c.t_start <= b.t_start <= c.t_end:
                    rel(modal[b.id][0], name, "shown during", chunk_of[b.id])
    by_label = {label: name for name, label in modal.values() if label and name in ents}
    xrefs = 0
    for c, t in items:
        for label in dict.fromkeys(_label(m) for m in _MENTION.finditer(t)):
            if (target := by_label.get(label)) and target != owner[c.id]:
                rel(owner[c.id], target, "references", c)
                xrefs += 1
    return ents, rels, xrefs, src
