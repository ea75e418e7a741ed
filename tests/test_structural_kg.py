"""The structural graph as pure data (no LightRAG): tree, passages and cross-references."""

from mmrag.blocks import Block, BlockKind, ParsedDocument
from mmrag.chunking import chunk_document
from mmrag.structural_kg import build_structural_kg


def test_tree_passages_and_cross_references():
    blocks = [
        Block(id="b0", kind=BlockKind.TITLE, order=0, text="Results", section="Results", level=1),
        Block(id="b1", kind=BlockKind.TEXT, order=1, text="As Fig. 2 shows, pochards dive deeper.", section="Results"),
        Block(id="b2", kind=BlockKind.IMAGE, order=2, caption="Figure 2: Dive depth by species", section="Results",
              description="A bar chart of dive depths."),
        Block(id="b3", kind=BlockKind.TEXT, order=3, text="Table 9 is not in this document.", section="Results"),
    ]
    doc = ParsedDocument(file_key="s:r.pdf", source="s", rel_path="r.pdf", content_hash="h", mime="application/pdf",
                         parser="test", parser_version="0", blocks=blocks)
    items = [(c, c.text) for c in chunk_document(doc, size=12, overlap=2)]
    ents, rels, xrefs, src = build_structural_kg("s:r.pdf", doc, items)
    assert ents["s:r.pdf"]["entity_type"] == "document"
    assert ents["s:r.pdf § Results"]["entity_type"] == "section"
    figure = "s:r.pdf | Figure 2"
    assert ents[figure]["entity_type"] == "image" and "bar chart" in ents[figure]["description"]
    passages = [n for n, e in ents.items() if e["entity_type"] == "passage"]
    assert passages and all(len(ents[n]["description"]) <= 200 for n in passages)
    assert ("s:r.pdf", "s:r.pdf § Results") in rels
    refs = [k for k, r in rels.items() if r["keywords"] == "references"]
    assert xrefs == 1 and len(refs) == 1 and figure in refs[0]  # "Table 9" points at nothing
    assert set(src) == {c.id for c, _ in items}
