"""Retrieval evaluation on an MMLongBench-Doc-style folder: `documents/*.pdf` + `samples.jsonl`.

For each answerable question (non-empty `evidence_pages`), retrieval is scoped to its document; the
ranking of pages is `retrieve`'s (hybrid: pages by their fused page score; dense, bm25: a page
ranks where its best chunk does; over the top `depth` chunks), and a question counts as found at k when one of the top-k pages is an evidence page (page
recall@k; pages 1-based in the file, 0-based in hits). Chunk-level recall (top-k chunks, so several
may share a page) is reported beside it. Figures are given overall and per evidence source
(Pure-text, Table, Chart, Figure, Generalized-text). With an LLM configured, the "not answerable"
questions (`[]` evidence) are put to the answer step, and the share it declines is reported.
"""

from __future__ import annotations

import ast
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from mmrag.config import Settings

KS = (1, 5, 10)


@dataclass
class Sample:
    doc_id: str
    question: str
    answer: str
    evidence_pages: list[int]
    evidence_sources: list[str] = field(default_factory=list)
    answer_format: str = ""

    @property
    def answerable(self) -> bool:
        return bool(self.evidence_pages)


def _as_list(v) -> list:
    if isinstance(v, list):
        return v
    try:
        out = ast.literal_eval(v) if isinstance(v, str) and v.strip() else []
    except (ValueError, SyntaxError):
        return []
    return list(out) if isinstance(out, (list, tuple)) else [out]


def load_samples(folder: Path) -> list[Sample]:
    path = Path(folder) / "samples.jsonl"
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            out.append(Sample(r["doc_id"], r["question"], str(r.get("answer", "")),
                              [int(p) for p in _as_list(r.get("evidence_pages"))],
                              [str(s) for s in _as_list(r.get("evidence_sources"))], str(r.get("answer_format", ""))))
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"{path}:{n}: not a sample ({type(e).__name__}: {e})") from e
    return out


def short_source(name: str) -> str:
    """'Pure-text (Plain-text)' → 'Pure-text'; 'Generalized-text (Layout)' → 'Generalized-text'."""
    return name.split(" (")[0].strip()


def page_ranking(hits: list[dict]) -> list[int | None]:
    """1-based pages in the order their best chunk ranks (image/transcript hits without a page: None, kept)."""
    out: list[int | None] = []
    for h in hits:
        p = h["page"] + 1 if h.get("page") is not None else None
        if p is None or p not in out:
            out.append(p)
    return out


def evaluate(settings: Settings, folder: Path, source: str, *, depth: int = 50, text_search: str = "hybrid",
             llm=None, text_embedder=None, limit: int | None = None) -> dict:
    """Page recall@1/5/10 (and per evidence source) of `retrieve` over the documents of `folder`,
    indexed under `source` (their paths relative to its root are `doc_id`)."""
    from mmrag.models import factory
    from mmrag.retrieval.query import retrieve

    samples = load_samples(folder)[:limit]
    text_embedder = text_embedder or factory.text_embedder(settings, cached=False)
    store = factory.milvus_store(settings)
    per_q, found_at, chunk_found = [], {k: 0 for k in KS}, {k: 0 for k in KS}
    by_source: dict[str, dict] = {}
    latencies, rerank_ms, rerank_errors, rerank_info = [], [], 0, None
    for s in samples:
        if not s.answerable:
            continue
        t0 = time.perf_counter()
        res = retrieve(settings, s.question, top_k=depth, mode="naive", files=[f"{source}:{s.doc_id}"],
                       with_images=False, text_search=text_search, text_embedder=text_embedder, store=store)
        latencies.append(time.perf_counter() - t0)
        if res.get("rerank"):
            rerank_info = res["rerank"]
            rerank_errors += bool(rerank_info.get("error"))
            rerank_ms.append(rerank_info["ms"])
        pages = [p["page"] + 1 for p in res["pages"]] or page_ranking(res["hits"])
        first = next((i + 1 for i, p in enumerate(pages) if p in s.evidence_pages), None)
        chunk_first = next((i + 1 for i, h in enumerate(res["hits"])
                            if h.get("page") is not None and h["page"] + 1 in s.evidence_pages), None)
        for k in KS:
            chunk_found[k] += bool(chunk_first and chunk_first <= k)
        per_q.append({"doc_id": s.doc_id, "question": s.question, "evidence_pages": s.evidence_pages,
                      "evidence_sources": [short_source(x) for x in s.evidence_sources], "retrieved_pages": pages[:max(KS)],
                      "first_hit_rank": first})
        for src in dict.fromkeys(short_source(x) for x in s.evidence_sources) or ["(none)"]:
            b = by_source.setdefault(src, {"n": 0, **{f"recall@{k}": 0 for k in KS}})
            b["n"] += 1
            for k in KS:
                b[f"recall@{k}"] += bool(first and first <= k)
        for k in KS:
            found_at[k] += bool(first and first <= k)
    n = len(per_q)
    out = {f"recall@{k}": round(found_at[k] / n, 4) if n else None for k in KS}
    for b in by_source.values():
        for k in KS:
            b[f"recall@{k}"] = round(b[f"recall@{k}"] / b["n"], 4)
    out.update({"chunk_recall": {f"recall@{k}": round(chunk_found[k] / n, 4) if n else None for k in KS},
                "by_source": dict(sorted(by_source.items())), "questions": n, "text_search": text_search,
                "documents": len({s.doc_id for s in samples}),
                "latency_ms_p50": round(sorted(latencies)[len(latencies) // 2] * 1000, 1) if latencies else None,
                "rerank": rerank_info and {"model": rerank_info["model"], "where": rerank_info["where"],
                                           "top_n": settings.rerank_top_n, "errors": rerank_errors,
                                           "ms_p50": sorted(rerank_ms)[len(rerank_ms) // 2]},
                "not_answerable": _not_answerable(settings, samples, source, llm, text_embedder, store),
                "per_question": per_q})
    return out


def _not_answerable(settings, samples, source, llm, text_embedder, store) -> dict:
    from mmrag.retrieval.answer import answer
    from mmrag.retrieval.query import retrieve

    todo = [s for s in samples if not s.answerable]
    if llm is None:
        return {"n": len(todo), "recognised": None, "share": None, "note": "no LLM configured (MMRAG_LLM_URL)"}
    recognised, errors = 0, 0
    for s in todo:
        res = retrieve(settings, s.question, top_k=5, mode="naive", files=[f"{source}:{s.doc_id}"], with_images=False,
                       text_embedder=text_embedder, store=store)
        a = answer(s.question, res["hits"], llm, use_vision=False)
        recognised += a.status == "cannot_answer"
        errors += a.status == "error"
    return {"n": len(todo), "recognised": recognised, "share": round(recognised / len(todo), 4) if todo else None,
            "errors": errors}


def recall_table(result: dict) -> str:
    """The figures as a Markdown table (overall, then per evidence source)."""
    head = "| evidence | questions | " + " | ".join(f"recall@{k}" for k in KS) + " |"
    rows = [head, "|" + "---|" * (2 + len(KS)),
            f"| all | {result['questions']} | " + " | ".join(f"{result[f'recall@{k}']:.3f}" for k in KS) + " |"]
    for src, b in result["by_source"].items():
        rows.append(f"| {src} | {b['n']} | " + " | ".join(f"{b[f'recall@{k}']:.3f}" for k in KS) + " |")
    return "\n".join(rows)


def plot_recall(result: dict, path: Path) -> Path:
    """recall@k curves (overall and per evidence source) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(KS, [result[f"recall@{k}"] for k in KS], marker="o", linewidth=2.5, label=f"all ({result['questions']})")
    for src, b in result["by_source"].items():
        ax.plot(KS, [b[f"recall@{k}"] for k in KS], marker=".", linestyle="--", label=f"{src} ({b['n']})")
    ax.set(xlabel="k", ylabel="page recall@k", ylim=(0, 1.02), xticks=list(KS), title="Retrieval: page recall@k")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
