"""Retrieval: the one function behind `mmrag query`, the chat page and the evaluation.

Text hits ("hybrid", the default): candidates from MiniLM vectors and from Milvus's BM25 index, fused
per page (see `_page_fusion`); or either signal alone ("dense", "bm25": Milvus's chunk ranking); then
the rerank stage when a cross-encoder is configured (`rerank`). Pages: a ranking of their own
(`mmrag.retrieval.pages`), fused with the visual page search when it is on. Image hits: CLIP's text
tower over the image collection (figures, pictures, video frames), listed after the text hits. Graph
context: LightRAG's modes local / global / hybrid / mix (naive = no graph, vector + BM25 chunks only).
Filters: sources, files, modalities.

Each hit carries its lineage: file (relative to its source root), source, page, bbox or time range,
modality, parser and pipeline version.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter

import numpy as np

from mmrag.config import Settings
from mmrag.index.milvus_store import IMAGE, PAGE, TEXT, MilvusStore, quote
from mmrag.retrieval.pages import (
    PAGE_REF_BONUS,
    PAGE_REF_ROWS,
    fuse_pages,
    page_list,
    page_refs,
    visual_pages,
)

log = logging.getLogger(__name__)
MODES = ("naive", "local", "global", "hybrid", "mix")
TEXT_SEARCH = ("hybrid", "dense", "bm25")
MODALITIES = ("text", "table", "image", "equation", "transcript")


def _hit(h: dict) -> dict:
    source, _, rel = h["file_key"].partition(":")
    page = h.get("page", -1)
    out = {
        "file": rel, "source": source, "page": None if page is None or page < 0 else int(page),
        "modality": h.get("modality", "text"), "text": h.get("text", ""), "score": round(float(h["score"]), 6),
        "bbox": (h.get("lineage") or {}).get("bbox"), "parser": h.get("parser", ""),
        "pipeline_version": h.get("pipeline_version", ""), "id": h["id"],
    }
    if h.get("t_start", -1) >= 0:
        out["t_start"], out["t_end"] = h["t_start"], h["t_end"]
    if h.get("image_path"):
        out["image_path"] = h["image_path"]
    return out


def _in(field: str, values) -> str:
    return f"{field} in [{', '.join(str(v) if isinstance(v, int) else quote(v) for v in values)}]"


def file_keys(settings: Settings, files, sources=None) -> list[str]:
    """`files` as file keys: "source:rel/path" stays; a bare relative path matches it in every known
    source (or in `sources`)."""
    from mmrag.manifest import Manifest

    known = sources or sorted(Manifest(settings.state_path).sources())
    out: list[str] = []
    for f in files:
        src, sep, _ = f.partition(":")
        out += [f] if sep and src in known else [f"{s}:{f}" for s in known]
    return out


def build_filter(settings: Settings, sources=None, files=None, modalities=None) -> str:
    parts = []
    if sources:
        parts.append(_in("source", sources))
    if files:
        parts.append(_in("file_key", file_keys(settings, files, sources)))
    if modalities:
        parts.append(_in("modality", modalities))
    return " and ".join(parts)


# -- lexical matching for the page-level fusion ---------------------------------------------------
# Milvus Lite's analyzer neither stems nor drops stop words (its stemmer filter is ignored), so the
# fusion re-scores candidate pages in Python: words, lower-cased, English stop words dropped,
# Snowball-stemmed ("rates" ~ "rate", "fastened" ~ "fasten").
_WORD = re.compile(r"\w+", re.UNICODE)
STOP_WORDS = frozenset("""a an and are as at be but by for if in into is it no not of on or such that the their then
there these they this to was will with what which who whom how when where why does do did from has have had its i you
your we our me my he she him her them than so can could would should may might shall about above after again all am
any because been before being below between both down during each few further here more most other out over own same
some too under until up very just also only s t don""".split())
# The commonest function words: they match most rows, and dropping them from the question makes
# Milvus's BM25 several times faster at 100k rows (their IDF is near zero, the ranking barely moves).
FILLER = frozenset("a an the of to in on for and or is are was were be been by with as at from that this it its".split())
_STEMS: dict[str, str] = {}
# Fusion weights, chosen on the sample-corpus fixture (tests/test_retrieval.py) and the MMLongBench
# slice together; both are flat around these values (README: "Retrieval quality").
DENSE_WEIGHT = 0.55  # dense vs lexical, each z-normalised over the candidates
PAGE_WEIGHT = 0.2  # a chunk's score: this share from its page (unit), the rest its own


def _load_stemmer():
    try:
        import snowballstemmer
    except ImportError:  # still a lexical match, only without stemming
        return lambda w: w
    return snowballstemmer.stemmer("english").stemWord


_stem = _load_stemmer()


def lexical_terms(text: str) -> list[str]:
    """Lower-cased, stop words dropped, stemmed word terms of `text`."""
    out = []
    for w in _WORD.findall(text.lower()):
        if w in STOP_WORDS:
            continue
        s = _STEMS.get(w)
        if s is None:
            if len(_STEMS) > 500_000:
                _STEMS.clear()
            s = _STEMS[w] = _stem(w)
        out.append(s)
    return out


def bm25(query_terms: list[str], docs: list[Counter], k1: float = 1.2, b: float = 0.75) -> np.ndarray:
    """Okapi BM25 of each term bag in `docs` for `query_terms`, IDF taken over `docs`."""
    n = len(docs)
    scores = np.zeros(n)
    if not n:
        return scores
    lens = np.array([sum(d.values()) for d in docs], dtype=float)
    norm = k1 * (1 - b + b * lens / (lens.mean() or 1.0))
    for t in set(query_terms):
        tf = np.array([d.get(t, 0) for d in docs], dtype=float)
        df = int((tf > 0).sum())
        if df:
            idf = np.log(1 + (n - df + 0.5) / (df + 0.5))
            scores += idf * tf * (k1 + 1) / (tf + norm)
    return scores


def _z(x: np.ndarray) -> np.ndarray:
    sd = x.std() if len(x) else 0.0
    return (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)


_TERMS: dict[str, Counter] = {}  # row id (content-addressed) -> its term bag


def _row_terms(row: dict) -> Counter:
    c = _TERMS.get(row["id"])
    if c is None:
        if len(_TERMS) > 100_000:
            _TERMS.clear()
        c = _TERMS[row["id"]] = Counter(lexical_terms(row.get("text", "")))
    return c


def _page_fusion(store: MilvusStore, vec: list[float], question: str, top_k: int, flt: str,
                 depth: int | None = None) -> tuple[list[dict], list[dict]]:
    """Hybrid text search, fused per page.

    1. Candidates: the top `depth` chunks by MiniLM cosine and the top `depth` by Milvus BM25 (asked
       with the question's stop words dropped: common words match most rows and slow BM25 down).
    2. Units: the candidates of one page (file key + page) together, or a chunk alone where it has
       no page (Markdown, HTML, transcripts). Pages are not read back whole: at 100k rows that read
       cost more than both searches, for no measured gain in recall.
    3. Units and chunks each get a dense score (a unit's: its best chunk's cosine) and a lexical
       score (BM25 over the unit's or chunk's text, stemmed, stop words dropped, IDF over the
       candidates), z-normalised over the candidates and mixed DENSE_WEIGHT : 1 - DENSE_WEIGHT.
    4. Hits: chunks by PAGE_WEIGHT × their unit's score + (1 - PAGE_WEIGHT) × their own; `score`.
    5. Pages: the units that are pages, by their unit score alone (top `top_k`).
    A page the question names (`page_refs`) is read in (up to PAGE_REF_ROWS rows) and its unit
    score gains PAGE_REF_BONUS. Returns (hits, pages).
    """
    depth = depth or max(2 * top_k, 50)
    dense = store.search(TEXT, vec, depth, flt)
    words = " ".join(w for w in _WORD.findall(question.lower()) if w not in FILLER) or question
    cands = {h["id"]: h for h in dense + store.bm25_search(words, depth, flt)}
    dense_cos = {h["id"]: float(h["score"]) for h in dense}
    named = page_refs(question)
    if named:  # the named pages' chunks are candidates whatever their similarity
        q = np.asarray(vec, dtype=float)
        for r in store.rows_with_vectors(TEXT, " and ".join(x for x in (flt, _in("page", named)) if x), PAGE_REF_ROWS):
            v = np.asarray(r.pop("vector"), dtype=float)
            dense_cos.setdefault(r["id"], float(v @ q / ((np.linalg.norm(v) * np.linalg.norm(q)) or 1.0)))
            cands.setdefault(r["id"], r)
    if not cands:
        return [], []
    rows = list(cands.values())
    floor = min(dense_cos.values(), default=0.0)  # lexical-only candidates score below the dense list
    cos = np.array([dense_cos.get(r["id"], floor) for r in rows])
    unit_of: list[tuple] = []
    for r in rows:
        p = r.get("page", -1)
        unit_of.append((r["file_key"], int(p)) if p is not None and p >= 0 else ("", r["id"]))
    units = list(dict.fromkeys(unit_of))
    index = {u: i for i, u in enumerate(units)}
    members: list[list[int]] = [[] for _ in units]
    for j, u in enumerate(unit_of):
        members[index[u]].append(j)
    qterms = lexical_terms(question)
    row_terms = [_row_terms(r) for r in rows]
    unit_terms = []
    for m in members:
        c: Counter = Counter()
        for j in m:
            c.update(row_terms[j])
        unit_terms.append(c)
    unit_dense = np.array([max(cos[j] for j in m) for m in members])
    unit_score = DENSE_WEIGHT * _z(unit_dense) + (1 - DENSE_WEIGHT) * _z(bm25(qterms, unit_terms))
    if named:
        unit_score += PAGE_REF_BONUS * np.array([u[0] != "" and u[1] in named for u in units])
    chunk_score = DENSE_WEIGHT * _z(cos) + (1 - DENSE_WEIGHT) * _z(bm25(qterms, row_terms))
    score = PAGE_WEIGHT * unit_score[[index[u] for u in unit_of]] + (1 - PAGE_WEIGHT) * chunk_score
    # A chunk ranks by its own fused score plus a share of its page's: a passage on a page that
    # matches the question as a whole (a table's caption above it, the words around a figure) rises.
    picked = sorted(range(len(rows)), key=lambda j: -score[j])[:top_k]
    out = []
    for j in picked:
        h = dict(rows[j])
        h["score"] = round(float(score[j]), 6)
        out.append(h)
    # Pages rank by their unit score alone: all their candidate chunks, not only the best one.
    order = sorted((i for i, u in enumerate(units) if u[0]), key=lambda i: -unit_score[i])[:top_k]
    pages = [{"file_key": units[i][0], "page": units[i][1], "score": round(float(unit_score[i]), 6)} for i in order]
    return out, pages


def rerank(reranker, question: str, hits: list[dict], top_n: int) -> tuple[list[dict], dict]:
    """The first `top_n` hits re-ordered by the cross-encoder's score of (question, hit text); the rest
    follow in their fused order. A reranked hit's `score` is the cross-encoder's, `fused_score` its
    score before. A reranker that fails leaves the fused order, with the error in the info:
    retrieval does not fail because its last stage did. Returns (hits, info)."""
    n = min(top_n, len(hits))
    info: dict = {"model": reranker.model, "where": reranker.where, "candidates": n}
    t0 = time.perf_counter()
    try:
        scores = reranker.score(question, [h.get("text", "") for h in hits[:n]]) if n else []
    except Exception as e:  # noqa: BLE001 - a server fault, a model that would not load: fused order stands
        log.warning("rerank with %s failed, the fused order stands: %s", reranker.model, e)
        info.update(error=f"{type(e).__name__}: {e}"[:300], ms=round((time.perf_counter() - t0) * 1000, 1))
        return hits, info
    info["ms"] = round((time.perf_counter() - t0) * 1000, 1)
    head = []
    for h, sc in zip(hits[:n], scores):
        head.append({**h, "fused_score": h["score"], "score": round(float(sc), 6)})
    # ties keep the fused order (sorted is stable)
    return sorted(head, key=lambda h: -h["score"]) + hits[n:], info


def retrieve(settings: Settings, question: str, *, top_k: int = 5, mode: str = "naive", sources=None, files=None,
             modalities=None, text_search: str = "hybrid", with_images: bool = True, image_k: int = 3,
             text_embedder=None, image_embedder=None, graph=None, store: MilvusStore | None = None,
             reranker=None, page_embedder=None) -> dict:
    """{"hits", "pages", "graph_context", "mode", "rerank", "visual_pages", "timings_ms"}: top-k text
    hits, then up to `image_k` image hits (when "image" is among `modalities` or no modality filter
    is set); the top-k pages (`mmrag.retrieval.pages`); the graph context of `mode`. `graph`: an open GraphStore to reuse (else one
    is opened if needed). `reranker`: default the settings' (`factory.reranker`; None = off); it
    re-scores the top `settings.rerank_top_n` text candidates (`rerank`). `page_embedder`: default
    the settings' (`factory.page_embedder`; None = off): the visual page ranking, fused with the
    text one (`fuse_pages`); `visual_pages` says what it did."""
    from mmrag.models import factory

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    if text_search not in TEXT_SEARCH:
        raise ValueError(f"text_search must be one of {TEXT_SEARCH}")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    store = store or factory.milvus_store(settings)
    text_embedder = text_embedder or factory.text_embedder(settings, cached=False)
    text_modalities = [m for m in (modalities or []) if m != IMAGE]
    flt = build_filter(settings, sources, files, text_modalities)
    reranker = reranker or factory.reranker(settings)
    top_n = max(0, settings.rerank_top_n) if reranker else 0
    depth = max(top_k, top_n)  # the reranker sees its N candidates whatever top_k is
    hits: list[dict] = []
    pages: list[dict] = []
    rerank_info = visual_info = None
    if not modalities or text_modalities:
        fused_pages = None
        if text_search == "bm25":
            raw = store.bm25_search(question, depth, flt)
        else:
            vec = text_embedder.embed([question])[0].tolist()
            if text_search == "hybrid":
                raw, fused_pages = _page_fusion(store, vec, question, depth, flt)
            else:
                raw = store.search(TEXT, vec, depth, flt)
        hits = [_hit(h) for h in raw]
        timings["text"] = (time.perf_counter() - t0) * 1000
        if top_n:
            hits, rerank_info = rerank(reranker, question, hits, top_n)
            timings["rerank"] = rerank_info["ms"]
        pages = page_list(hits, fused_pages, rerank_info, depth)
        hits = hits[:top_k]
        page_embedder = page_embedder or factory.page_embedder(settings)
        if page_embedder is not None and store.has(PAGE):
            visual, visual_info = visual_pages(page_embedder, store, question, depth,
                                               build_filter(settings, sources, files))
            timings["pages"] = visual_info["ms"]
            pages = fuse_pages(pages, visual, depth)
        pages = pages[:top_k]
    else:
        timings["text"] = (time.perf_counter() - t0) * 1000
    if with_images and image_k > 0 and (not modalities or IMAGE in modalities) and store.has(IMAGE):
        t1 = time.perf_counter()
        image_embedder = image_embedder or factory.image_embedder(settings, cached=False)
        if image_embedder.enabled:
            # CLIP scores live on another scale than the text model's: image hits are listed after
            # the text hits rather than merged by score.
            ivec = image_embedder.embed_texts([question])[0].tolist()
            hits += [_hit(h) for h in store.search(IMAGE, ivec, image_k, build_filter(settings, sources, files))]
        timings["images"] = (time.perf_counter() - t1) * 1000
    context = ""
    if mode != "naive":
        t2 = time.perf_counter()
        if graph is None:
            graph = factory.graph_store(settings, text_embedder=text_embedder, llm=factory.llm_client(settings),
                                        manifest=factory.manifest(settings))
        context = graph.query_context(question, mode=mode, top_k=max(top_k, 10), sources=sources or None)
        timings["graph"] = (time.perf_counter() - t2) * 1000
    return {"hits": hits, "pages": pages, "graph_context": context, "mode": mode, "rerank": rerank_info,
            "visual_pages": visual_info,
            "timings_ms": {k: round(v, 1) for k, v in timings.items()}}


def search(settings: Settings, text: str, top_k: int = 5, source: str | None = None, **kw) -> list[dict]:
    """Hits only (no graph): `retrieve` in naive mode."""
    return retrieve(settings, text, top_k=top_k, sources=[source] if source else None, **kw)["hits"]
