"""Page ranking: `retrieve`'s "pages" (pages by their own fused score) and the pages a question names."""

from __future__ import annotations

import pytest
from conftest import isolated_env, run_cli

from mmrag.retrieval.pages import page_refs


@pytest.mark.parametrize("question,pages", [
    ("what is the number of red logos in page 10?", [9]),
    ("What date is mentioned on the second page?", [1]),
    ("the email address on the second cover page", [1]),
    ("How many lines are highlighted on the first page?", [0]),
    ("Compare pages 3 and 5", [2, 4]),
    ("pages 2, 4 & 7", [1, 3, 6]),
    ("the table on p. 12", [11]),
    ("what the 3rd page shows", [2]),
    ("List all pages on which the logo appears", []),
    ("first, turn the page", []),
    ("a page of contents", []),
    ("page 0 of nothing", []),
])
def test_page_refs(question, pages):
    assert page_refs(question) == pages


@pytest.fixture(scope="module")
def slice_index(tmp_path_factory):
    from test_eval import _slice

    tmp = tmp_path_factory.mktemp("pages")
    folder = _slice(tmp)
    with isolated_env(tmp):
        code, out = run_cli("ingest", str(folder / "documents"), "--source", "docs")
        assert code == 0 and out["indexed"] == 2, out
        yield


def test_pages_rank_by_their_own_score(slice_index):
    code, out = run_cli("query", "How fast does the peregrine falcon dive?", "--top-k", "5", "--no-images")
    assert code == 0
    pages = out["pages"]
    assert pages[0] == {**pages[0], "file": "birds.pdf", "source": "docs", "page": 1}
    assert len({(p["file"], p["page"]) for p in pages}) == len(pages) <= 5
    assert [p["score"] for p in pages] == sorted((p["score"] for p in pages), reverse=True)
    assert {(h["file"], h["page"]) for h in out["hits"]} <= {(p["file"], p["page"]) for p in pages}


def test_a_named_page_rises(slice_index):
    """The same words with and without naming the third page: that page's score gains the bonus and
    it ranks higher (no word of the question is on it)."""
    from mmrag.retrieval.pages import PAGE_REF_BONUS

    def pages(question):
        code, out = run_cli("query", question, "--top-k", "3", "--no-images", "--file", "birds.pdf")
        assert code == 0
        return {p["page"]: (rank, p["score"]) for rank, p in enumerate(out["pages"])}

    plain = pages("What is written in the bird booklet?")
    named = pages("What is written on page 3 of the bird booklet?")
    assert named[2][0] < plain[2][0], (plain, named)
    assert named[2][1] - plain[2][1] > PAGE_REF_BONUS / 2, (plain, named)


def test_a_named_page_joins_the_candidates(slice_index):
    """With one candidate from each search, the page the question names is read in all the same."""
    from mmrag.config import Settings
    from mmrag.models import factory
    from mmrag.retrieval.query import _page_fusion, build_filter

    settings = Settings.from_env()
    store, emb = factory.milvus_store(settings), factory.text_embedder(settings, cached=False)
    flt = build_filter(settings, files=["docs:birds.pdf"])
    for question, want in (("How fast does the peregrine falcon dive?", {1}),
                           ("How fast does the peregrine falcon dive, says page 3?", {1, 2})):
        hits, pages = _page_fusion(store, emb.embed([question])[0].tolist(), question, 5, flt, depth=1)
        assert {p["page"] for p in pages} == want, (question, pages)
        assert {h["page"] for h in hits} == want
