"""Issue 4: hybrid retrieval vs dense-only and BM25-only, measured on a fixture ingested from the
sample corpus with real Milvus Lite and the real MiniLM.

The queries are written from the files' content: paraphrases (few words shared with the target,
where the dense model should help) and exact identifiers / table cells / rare words (where BM25
should help). A target is a file (one of several where two files hold the same text), with the
page (0-based) for paged files and a phrase the hit must contain where the file has many chunks.
The metric is the mean reciprocal rank of the first target hit in the top 10 (MRR@10).
"""

from __future__ import annotations

import pytest
from conftest import SAMPLE, copy_corpus
from helpers import cli_json

FILES = ["wiki_duck.html", "duck.md", "word_sample.docx", "word_tables.docx", "xlsx_01.xlsx", "multi_page.pdf"]

# (query, target files, page or None, phrase in the hit's text or None)
QUERIES = [
    # paraphrases
    ("Why do some ducks wander around looking for temporary lakes after rain instead of migrating?",
     ("wiki_duck.html",), None, "nomadic"),
    ("What animals hunt young ducklings?", ("wiki_duck.html",), None, "Ducks have many predators"),
    ("Where does the English name of this bird come from?", ("wiki_duck.html",), None, "Old English dūce"),
    ("How many ducks are killed for their meat every year?", ("wiki_duck.html",), None, "slaughtered"),
    ("When did people start writing documents on their own home computers?", ("multi_page.pdf",), 0, None),
    ("How did writing software change schooling?", ("multi_page.pdf",), 3, None),
    ("Can I edit the same file on my phone and then on my laptop?", ("multi_page.pdf",), 3, None),
    ("What should I remember to bring for a day of swimming at the lake?", ("duck.md", "word_sample.docx"), None,
     "sunglasses"),
    ("Which word processing program did lawyers favour?", ("multi_page.pdf",), 1, None),
    ("What does the story of document editing tools say about human progress overall?", ("multi_page.pdf",), 4, None),
    # exact identifiers, table cells, rare words
    ("Merged Cell 3.1 4.1", ("word_tables.docx",), None, "Merged Cell 3.1 4.1"),
    ("col-4", ("xlsx_01.xlsx",), 1, "col-4"),
    ("WordStar CP/M", ("multi_page.pdf",), 0, None),
    ("Scrivener", ("multi_page.pdf",), 3, None),
    ("ProWritingAid", ("multi_page.pdf",), 3, None),
    ("Lubāna Föglö", ("wiki_duck.html",), None, "Lubāna"),
    ("Bucephala albeola", ("wiki_duck.html",), None, "Bucephala albeola"),
    ("Stictonettini", ("wiki_duck.html",), None, "Stictonettini"),
    ("Blueberry Strawberry Cranberry 150", ("duck.md", "word_sample.docx"), None, "Cranberry"),
    ("Christopher Latham Sholes 1868", ("multi_page.pdf",), 0, None),
    ("LaughLab Hertfordshire", ("wiki_duck.html",), None, "LaughLab"),
]


def _is_target(hit, files, page, phrase) -> bool:
    return (hit["file"] in files and (page is None or hit["page"] == page)
            and (phrase is None or phrase in hit["text"]))


@pytest.mark.slow
def test_hybrid_beats_dense_and_bm25(mmrag_env, tmp_path, capsys):
    from mmrag.config import Settings
    from mmrag.models import factory
    from mmrag.retrieval.query import retrieve

    root = copy_corpus(SAMPLE, tmp_path / "fixture", FILES)
    code, out = cli_json(capsys, "ingest", str(root), "--source", "s")
    assert code == 0 and out["indexed"] == len(FILES), out["failed"]

    settings = Settings.from_env()
    store, embedder = factory.milvus_store(settings), factory.text_embedder(settings, cached=False)
    mrr, ranks = {}, {}
    for mode in ("hybrid", "dense", "bm25"):
        ranks[mode] = []
        for question, files, page, phrase in QUERIES:
            hits = retrieve(settings, question, top_k=10, text_search=mode, with_images=False,
                            text_embedder=embedder, store=store)["hits"]
            assert hits and len(hits) <= 10 and all(h["source"] == "s" for h in hits)  # BM25: only matching rows
            ranks[mode].append(next((i + 1 for i, h in enumerate(hits) if _is_target(h, files, page, phrase)), None))
        mrr[mode] = sum(1 / r for r in ranks[mode] if r) / len(QUERIES)
    with capsys.disabled():
        print("\nMRR@10 over", len(QUERIES), "queries:", {m: round(v, 3) for m, v in mrr.items()})
        for m, r in ranks.items():
            print(f"  {m:6s} first-target ranks: {r}")
    assert mrr["hybrid"] > mrr["dense"] and mrr["hybrid"] > mrr["bm25"], mrr
