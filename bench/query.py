"""Benchmark: retrieval latency (hybrid: MiniLM dense + Milvus BM25 candidates, page-level fusion with
stemmed BM25; Milvus Lite; no LLM) at 10k and 100k text rows, in the process that wrote the rows and
in a fresh process.

Rows: the text of the MMLongBench slice's PDFs (pypdfium2) cut into ~120-word windows and embedded
once with the real MiniLM; to reach 10k / 100k rows each window is repeated under other file keys
with its vector jittered (unit-normalised) and a row tag in its text, so the dense and BM25 indexes
hold that many distinct rows. Writes go through `MilvusStore.replace_file` (the pipeline's path).
Queries: the slice's 81 real questions, through `mmrag.retrieval.query.retrieve` (the CLI's function), with
images and graph off. The first query of each process is reported apart (load + warm-up).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/query.py [--sizes 10000,100000] [--rerank-top-n 20] [--json]

Rerank: the same questions again with the rerank stage on (`--rerank-top-n`, 0 = skip), against the
loopback model server's `/v1/rerank` (tests/openai_server.py, its word-overlap scorer): what the
stage costs in mmrag (request, JSON, re-ordering), not a cross-encoder's compute, which a real
server adds (a GPU cross-encoder scores 20 passages in a few ms to tens of ms).

A Milvus Lite data dir admits one process at a time, so the writer exits before the fresh process
opens the same dir.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
EVAL = REPO.parent / "shared" / "eval" / "mmlongbench"


def base_windows(words_per: int = 120) -> list[str]:
    import pypdfium2

    out = []
    for pdf in sorted((EVAL / "documents").glob("*.pdf")):
        doc = pypdfium2.PdfDocument(str(pdf))
        for page in doc:
            words = page.get_textpage().get_text_range().split()
            out += [" ".join(words[i: i + words_per]) for i in range(0, len(words), words_per) if words[i: i + words_per]]
        doc.close()
    return out


def questions() -> list[str]:
    return [json.loads(line)["question"] for line in (EVAL / "samples.jsonl").read_text().splitlines() if line.strip()]


def measure(settings, prefix: str, rerank_top_n: int = 0) -> dict:
    from mmrag.models import factory
    from mmrag.retrieval.query import retrieve

    s = settings.with_(collection_prefix=prefix)
    te = factory.text_embedder(s, cached=False)
    store = factory.milvus_store(s)
    qs = questions()
    t0 = time.perf_counter()
    retrieve(s, qs[0], top_k=10, with_images=False, text_embedder=te, store=store)
    first = (time.perf_counter() - t0) * 1000
    lat = []
    for q in qs[1:]:
        t0 = time.perf_counter()
        retrieve(s, q, top_k=10, with_images=False, text_embedder=te, store=store)
        lat.append((time.perf_counter() - t0) * 1000)
    lat.sort()
    out = {"first_ms": round(first, 1), "p50_ms": round(statistics.median(lat), 1),
           "p95_ms": round(lat[int(0.95 * (len(lat) - 1))], 1), "queries": len(lat)}
    if rerank_top_n:
        out["rerank"] = measure_rerank(s, qs, te, store, rerank_top_n, out["p50_ms"])
    return out


def measure_rerank(s, qs: list[str], te, store, top_n: int, plain_p50: float) -> dict:
    """The questions again with the rerank stage on, against the loopback server's /v1/rerank."""
    from openai_server import FakeOpenAIServer

    from mmrag.models import factory
    from mmrag.retrieval.query import retrieve

    with FakeOpenAIServer(models=("bench-rerank",)) as server:
        rs = s.with_(rerank_model="bench-rerank", rerank_url=server.base_url, rerank_top_n=top_n)
        rr = factory.reranker(rs)
        retrieve(rs, qs[0], top_k=10, with_images=False, text_embedder=te, store=store, reranker=rr)  # connect
        total, stage = [], []
        for q in qs[1:]:
            t0 = time.perf_counter()
            res = retrieve(rs, q, top_k=10, with_images=False, text_embedder=te, store=store, reranker=rr)
            total.append((time.perf_counter() - t0) * 1000)
            assert "error" not in res["rerank"], res["rerank"]
            stage.append(res["timings_ms"]["rerank"])
    p50 = statistics.median(total)
    return {"top_n": top_n, "stage_p50_ms": round(statistics.median(stage), 1),
            "stage_p95_ms": round(sorted(stage)[int(0.95 * (len(stage) - 1))], 1),
            "with_rerank_p50_ms": round(p50, 1), "with_over_without_p50": round(p50 / plain_p50, 3)}


def write(settings, sizes: list[int]) -> dict:
    import numpy as np

    from mmrag.index.milvus_store import TEXT, MilvusStore, Row
    from mmrag.models import factory

    texts = base_windows()
    te = factory.text_embedder(settings, cached=False)
    t0 = time.perf_counter()
    vecs = te.embed(texts)
    embed_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    out = {"base_windows": len(texts), "embed_s": round(embed_s, 1)}
    for n in sizes:
        prefix = f"bench{n}"
        store = MilvusStore(settings.resolved_milvus_uri, prefix=prefix)
        store.ensure_collections(vecs.shape[1], None)
        t0 = time.perf_counter()
        per_file = 500
        for f in range(0, n, per_file):
            rows = []
            for i in range(f, min(f + per_file, n)):
                b = i % len(texts)
                v = vecs[b] if i < len(texts) else vecs[b] + rng.normal(0, 0.03, vecs.shape[1]).astype(np.float32)
                v = v / np.linalg.norm(v)
                rows.append(Row(id=f"r{i}", file_key=f"bench:file{f // per_file:04d}.pdf", source="bench", modality="text",
                                text=f"{texts[b]} (row {i})", vector=v.tolist(), page=i % 40))
            store.replace_file(TEXT, f"bench:file{f // per_file:04d}.pdf", rows)
        store.flush()  # as the milvus_partitions asset does at the end of a run
        out[str(n)] = {"write_s": round(time.perf_counter() - t0, 1), "rows": store.count(TEXT),
                       "writer_process": measure(settings, prefix)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--home", help="(internal) data dir to use")
    ap.add_argument("--phase", choices=("write", "read"), help="(internal) one phase in this process")
    ap.add_argument("--rerank-top-n", type=int, default=20, help="rerank stage at this N (0 = not measured)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    if args.phase:
        from mmrag.config import Settings

        os.environ["MMRAG_HOME"] = args.home
        settings = Settings.from_env()
        res = write(settings, sizes) if args.phase == "write" else {
            str(n): measure(settings, f"bench{n}", args.rerank_top_n) for n in sizes}
        print(json.dumps(res))
        return
    home = tempfile.mkdtemp(prefix="mmrag-query-bench-")
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}

    def phase(name: str) -> dict:
        res = subprocess.run([sys.executable, __file__, "--phase", name, "--home", home, "--sizes", args.sizes,
                              "--rerank-top-n", str(args.rerank_top_n)],
                             capture_output=True, text=True, env=env, check=True)
        return json.loads(res.stdout.strip().splitlines()[-1])

    wrote = phase("write")
    fresh = phase("read")
    result = {"sizes": sizes, "base_windows": wrote["base_windows"], "per_size": {}}
    for n in sizes:
        w, f = wrote[str(n)]["writer_process"], fresh[str(n)]
        result["per_size"][str(n)] = {"rows": wrote[str(n)]["rows"], "write_s": wrote[str(n)]["write_s"],
                                      "writer_process": w, "fresh_process": f,
                                      "fresh_over_writer_p50": round(f["p50_ms"] / w["p50_ms"], 3)}
    big, small = str(max(sizes)), str(min(sizes))
    result["p50_100k_over_10k_fresh"] = round(result["per_size"][big]["fresh_process"]["p50_ms"]
                                              / result["per_size"][small]["fresh_process"]["p50_ms"], 3)
    result["aim_p50_le_50ms_at_largest"] = result["per_size"][big]["fresh_process"]["p50_ms"] <= 50
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"hybrid retrieval (MiniLM + BM25, page fusion), Milvus Lite, top-10, {questions().__len__() - 1} timed queries per process")
    for n in sizes:
        r = result["per_size"][str(n)]
        for where in ("writer_process", "fresh_process"):
            m = r[where]
            print(f"  {r['rows']:>7} rows  {where.replace('_', ' '):<15} p50 {m['p50_ms']:6.1f} ms  p95 {m['p95_ms']:6.1f} ms"
                  f"  (first query {m['first_ms']:.0f} ms)")
        print(f"          fresh / writer p50: {r['fresh_over_writer_p50']:.3f}; rows written in {r['write_s']:.0f} s")
        if rr := r["fresh_process"].get("rerank"):
            print(f"          rerank top {rr['top_n']} (loopback /v1/rerank): stage p50 {rr['stage_p50_ms']:.1f} ms, "
                  f"p95 {rr['stage_p95_ms']:.1f} ms; query p50 with / without: {rr['with_over_without_p50']:.3f}")
    print(f"p50 {big} / {small} rows (fresh): {result['p50_100k_over_10k_fresh']:.3f}; "
          f"aim p50 ≤ 50 ms at {big}: {'PASS' if result['aim_p50_le_50ms_at_largest'] else 'FAIL'}")


if __name__ == "__main__":
    main()
