"""Pages as a ranking of their own: the pages among a query's text hits (`page_list`), the pages a
question names (`page_refs`), and the visual page search fused with the text ranking (`visual_pages`,
`fuse_pages`). Used by `mmrag.retrieval.query.retrieve`."""

from __future__ import annotations

import logging
import re
import time

from mmrag.index.milvus_store import PAGE, MilvusStore

log = logging.getLogger(__name__)

# A page the question names ("on page 10", "the second page"): its chunks join the candidates and
# its unit score gains this much (in z units); at most PAGE_REF_ROWS rows are read for them.
PAGE_REF_BONUS = 1.0
PAGE_REF_ROWS = 200
_ORDINALS = {w: i for i, w in enumerate(
    "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth".split(), 1)}
_PAGE_REF = re.compile(
    r"\b(?:pages?|p\.|pg\.?)\s*(\d{1,4})((?:\s*(?:,|and|&|-|to)\s*\d{1,4})*)"  # page 10, pages 3 and 5
    r"|\b(\d{1,4})(?:st|nd|rd|th)\s+(?:\w+\s+)?page\b"  # 2nd page
    r"|\b(" + "|".join(_ORDINALS) + r")\s+(?:\w+\s+)?page\b", re.I)  # the second (cover) page


def page_refs(question: str) -> list[int]:
    """The pages a question names, 0-based: "page 10" → 9, "pages 3 and 5" → 2, 4, "the second page"
    → 1, "the 3rd page" → 2. Physical pages of the file (a printed page label may differ)."""
    out: list[int] = []
    for m in _PAGE_REF.finditer(question):
        if m.group(1):
            nums = [int(m.group(1)), *map(int, re.findall(r"\d{1,4}", m.group(2) or ""))]
        else:
            nums = [int(m.group(3)) if m.group(3) else _ORDINALS[m.group(4).lower()]]
        out += [n - 1 for n in nums if 1 <= n <= 10_000 and n - 1 not in out]
    return out


def page_list(hits: list[dict], fused_pages: list[dict] | None, rerank_info: dict | None, k: int) -> list[dict]:
    """The pages of the text hits, best first, `k` at most: {"file", "source", "page", "score"}.
    Hybrid search ranks pages by their own fused score (`_page_fusion`); the reranked head comes
    first where a reranker ran (a page ranks where its best reranked chunk does); otherwise, and for
    dense and bm25, a page ranks where its best chunk does."""
    out: dict[tuple, dict] = {}

    def add(file_key: str, page, score: float) -> None:
        if page is not None and page >= 0 and (file_key, page) not in out:
            source, _, rel = file_key.partition(":")
            out[(file_key, page)] = {"file": rel, "source": source, "page": int(page), "score": round(float(score), 6)}

    reranked = rerank_info["candidates"] if rerank_info and not rerank_info.get("error") else 0
    for h in hits[:reranked]:
        add(f"{h['source']}:{h['file']}", h["page"], h["score"])
    for p in fused_pages if fused_pages is not None else ():
        add(p["file_key"], p["page"], p["score"])
    for h in hits[reranked:]:
        add(f"{h['source']}:{h['file']}", h["page"], h["score"])
    return list(out.values())[:k]


RRF_K = 60  # reciprocal-rank fusion of the text and visual page rankings (Cormack et al.'s constant)


def visual_pages(page_embedder, store: MilvusStore, question: str, depth: int, flt: str) -> tuple[list[dict], dict]:
    """Pages by the multimodal model's similarity of the question to the rendered page (the page
    collection), and what the search did: model, where, candidates, ms, or the error (a server fault
    leaves the text ranking alone)."""
    info: dict = {"model": page_embedder.model, "where": page_embedder.where}
    t0 = time.perf_counter()
    try:
        qv = page_embedder.embed_queries([question])[0].tolist()
        found = store.search(PAGE, qv, depth, flt)
    except Exception as e:  # noqa: BLE001 - the page model is down: the text ranking stands
        log.warning("visual page search with %s failed: %s", page_embedder.model, e)
        info.update(error=f"{type(e).__name__}: {e}"[:300], ms=round((time.perf_counter() - t0) * 1000, 1))
        return [], info
    info.update(candidates=len(found), ms=round((time.perf_counter() - t0) * 1000, 1))
    return [{"file_key": h["file_key"], "page": int(h["page"]), "score": float(h["score"])} for h in found], info


def fuse_pages(text_pages: list[dict], visual: list[dict], k: int) -> list[dict]:
    """The text page ranking and the visual one, fused by reciprocal rank (their scores are on
    unrelated scales); each page keeps its `visual_score` where the visual search found it."""
    fused: dict[tuple, dict] = {}
    for rank, p in enumerate(text_pages):
        fused[(f"{p['source']}:{p['file']}", p["page"])] = {**p, "score": 1 / (RRF_K + rank + 1)}
    for rank, v in enumerate(visual):
        key = (v["file_key"], v["page"])
        if key not in fused:
            source, _, rel = v["file_key"].partition(":")
            fused[key] = {"file": rel, "source": source, "page": v["page"], "score": 0.0}
        fused[key]["score"] += 1 / (RRF_K + rank + 1)
        fused[key]["visual_score"] = round(v["score"], 6)
    out = sorted(fused.values(), key=lambda p: -p["score"])[:k]
    return [{**p, "score": round(p["score"], 6)} for p in out]
