"""The structural graph as pure data (no LightRAG): tree, passages and cross-references."""

from mmrag.blocks import Block, BlockKind, ParsedDocument
from mmrag.graph.structural import build_structural_kg
from mmrag.index.chunking import chunk_document


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


def test_video_frames_link_to_the_video_and_the_transcript_window_they_fall_in():
    speech = [Block(id=f"b{i}", kind=BlockKind.TRANSCRIPT, order=i, text=f"segment {i} about ducks and geese",
                    t_start=10.0 * i, t_end=10.0 * i + 9) for i in range(10)]  # 0–99 s
    frames = [Block(id=f"f{t}", kind=BlockKind.IMAGE, order=100 + t, caption=f"Frame at {t}", image_path=f"/x/{t}.png",
                    t_start=float(t), t_end=float(t)) for t in (5, 60, 150)]
    doc = ParsedDocument(file_key="v:talk.mp4", source="v", rel_path="talk.mp4", content_hash="h", mime="video/mp4",
                         parser="ffmpeg+whisper", parser_version="0", blocks=speech + frames)
    chunks = chunk_document(doc, window_s=45.0)
    windows = [c for c in chunks if c.modality == "transcript"]
    assert len(windows) >= 2
    ents, rels, _, _ = build_structural_kg("v:talk.mp4", doc, [(c, c.text) for c in chunks])
    frame_names = {n: e for n, e in ents.items() if e["entity_type"] == "image"}
    assert len(frame_names) == 3
    during = [r for r in rels.values() if r["keywords"] == "shown during"]
    by_frame: dict[str, list[str]] = {}
    for r in during:
        by_frame.setdefault(r["src_id"], []).append(r["tgt_id"])
    owner = {c.id: n for n, e in ents.items() if e["entity_type"] == "passage" for c in windows
             if e["source_id"] == f"v:talk.mp4#{c.id}"}
    for name in frame_names:
        assert ("v:talk.mp4", name) in rels or (name, "v:talk.mp4") in rels  # contained by the video
    t_of = {n: float(n.rsplit("f", 1)[-1]) for n in frame_names}
    for name, t in t_of.items():
        expected = {owner[c.id] for c in windows if c.t_start <= t <= c.t_end}
        assert set(by_frame.get(name, [])) == expected
    assert any(by_frame.values()) and not by_frame.get(next(n for n, t in t_of.items() if t == 150))  # after the talk
