"""Visual page retrieval (`MMRAG_PAGE_EMBED_MODEL`): PDF pages rendered and embedded whole by a
multimodal embedding model on the model server, searched with the question, fused with the text
page ranking. Off by default.

The server is the loopback fake speaking vLLM's multimodal embeddings form (`messages` with the page
image); its vectors are scripted: each page image gets a basis vector of its own, and the question
gets the vector of one chosen page, so the visual search's answer is known. This proves the plumbing
(rendering, requests, the page collection, its lifecycle and audit, fusion, faults), not a model's
quality, which needs a real model on a GPU server.
"""

from __future__ import annotations

import base64
import shutil

import pytest
from conftest import isolated_env, run_cli
from openai_server import FakeOpenAIServer, Fault

from mmrag.models.page_embed import render_pages
from mmrag.retrieval.pages import RRF_K, fuse_pages

DIM = 16
QUESTION = "Which page shows the colourful emblem?"


def test_fuse_pages_by_reciprocal_rank():
    text = [{"file": "a.pdf", "source": "s", "page": p, "score": 9.0 - p} for p in (0, 1, 2)]
    visual = [{"file_key": "s:a.pdf", "page": 2, "score": 0.9}, {"file_key": "s:b.pdf", "page": 0, "score": 0.5}]
    out = fuse_pages(text, visual, 10)
    want = {(0,): 1 / (RRF_K + 1), (1,): 1 / (RRF_K + 2), (2,): 1 / (RRF_K + 3) + 1 / (RRF_K + 1)}
    assert out[0]["page"] == 2 and out[0]["file"] == "a.pdf" and out[0]["visual_score"] == 0.9
    assert out[0]["score"] == round(want[(2,)], 6) and out[1]["page"] == 0 and "visual_score" not in out[1]
    assert {(p["file"], p["page"]) for p in out} == {("a.pdf", 0), ("a.pdf", 1), ("a.pdf", 2), ("b.pdf", 0)}
    assert fuse_pages(text, [], 2) == [{**text[0], "score": round(1 / (RRF_K + 1), 6)},
                                       {**text[1], "score": round(1 / (RRF_K + 2), 6)}]


@pytest.fixture(scope="module")
def server():
    with FakeOpenAIServer(models=("fake-page",), embedding_dim=DIM) as s:
        yield s


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, server):
    from test_eval import _slice

    tmp = tmp_path_factory.mktemp("pageimg")
    docs = _slice(tmp) / "documents"
    # every rendered page -> its basis vector; the question -> birds.pdf's first page
    pages = {}
    for name in ("birds.pdf", "machines.pdf"):
        for i, png in render_pages(docs / name, dpi=96):
            pages[base64.b64encode(png).decode()] = (name, i)
    order = sorted(pages.values())
    basis = {k: [1.0 if j == order.index(v) else 0.0 for j in range(DIM)] for k, v in pages.items()}
    target = ("birds.pdf", 0)
    server.image_embedder = lambda url, dim: basis[url.split(",", 1)[1]]
    server.embedder = lambda text, dim: basis[next(k for k, v in pages.items() if v == target)]
    with isolated_env(tmp) as mp:
        mp.setenv("MMRAG_PAGE_EMBED_MODEL", "fake-page")
        mp.setenv("MMRAG_PAGE_EMBED_URL", server.base_url)
        mp.setenv("MMRAG_LLM_RETRIES", "0")
        server.reset()
        code, out = run_cli("ingest", str(docs), "--source", "docs")
        assert code == 0 and out["indexed"] == 2, out
        yield mp, docs, pages, target


def test_ingest_embeds_every_page_image(indexed, server):
    from helpers import store as open_store

    _, docs, pages, _ = indexed
    sent = [r.json for r in server.requests if r.path == "/v1/embeddings"]
    images = [m["content"][0]["image_url"]["url"] for r in sent for m in r["messages"]]
    assert all(r["model"] == "fake-page" for r in sent) and len(images) == len(pages) == 5
    assert {pages[u.split(",", 1)[1]] for u in images} == set(pages.values())  # each page once, as rendered
    st = open_store()
    rows = list(st.all_rows("page", ["file_key", "page", "chunk_id"]))
    assert sorted((r["file_key"], r["page"]) for r in rows) == sorted((f"docs:{n}", i) for n, i in pages.values())
    code, rep = run_cli("check")
    assert code == 0 and rep["before"]["clean"], rep


def test_query_fuses_the_visual_page_ranking(indexed, server):
    _, _, _, target = indexed
    code, plain = run_cli("query", QUESTION, "--file", "birds.pdf", "--top-k", "3", "--no-images")
    vp = plain["visual_pages"]
    assert code == 0 and vp["model"] == "fake-page" and vp["candidates"] == 3 and "error" not in vp, vp
    pages = plain["pages"]
    assert all("visual_score" in p for p in pages)
    best = max(pages, key=lambda p: p["visual_score"])
    assert (best["file"], best["page"]) == target and best["visual_score"] == pytest.approx(1.0)
    assert [r.json.get("input") for r in server.requests if r.path == "/v1/embeddings"][-1] == [QUESTION]
    # the same query with the page model failing: the text ranking alone, and the error said
    server.fault_fn = lambda rec: Fault("status", 500)
    try:
        code, down = run_cli("query", QUESTION, "--file", "birds.pdf", "--top-k", "3", "--no-images")
    finally:
        server.clear_faults()
    assert code == 0 and "500" in down["visual_pages"]["error"] and all("visual_score" not in p for p in down["pages"])
    # the target gains from the visual ranking: it ranks no lower fused than on text alone
    rank = lambda ps: [(p["file"], p["page"]) for p in ps].index(target)  # noqa: E731
    assert rank(pages) <= rank(down["pages"]) and pages[0]["score"] > down["pages"][0]["score"]


def test_a_deleted_pdf_takes_its_page_rows_along(indexed):
    from helpers import store as open_store

    _, docs, _, _ = indexed
    gone = docs.parent / "gone.pdf"
    shutil.move(docs / "machines.pdf", gone)
    try:
        code, out = run_cli("ingest", str(docs), "--source", "docs")
        assert code == 0 and out["deleted"] == 1, out
        keys = {r["file_key"] for r in open_store().all_rows("page", ["file_key"])}
        assert keys == {"docs:birds.pdf"}
    finally:
        shutil.move(gone, docs / "machines.pdf")


def test_off_by_default(tmp_path):
    from mmrag.config import Settings
    from mmrag.models import factory

    with isolated_env(tmp_path):
        s = Settings.from_env()
        assert factory.page_embedder(s) is None
        on = s.with_(page_embed_model="m", page_embed_url="http://127.0.0.1:9/v1")
        assert on.fingerprint() != s.fingerprint()  # turning it on re-indexes (the pages get vectors)
        assert Settings().fingerprint() == Settings(page_dpi=150).fingerprint()  # off: the dpi is no matter
