"""Benchmark (not a test): the service. Freshness and queries under ingest through `mmrag up`, and the
query API's warm latency against today's cold `mmrag query` at 10k and 100k rows.

1. Freshness, before/after the warm services: `mmrag up` on a fresh data dir (no LLM, CLIP with
   random weights, the sensor every `--interval` s, `--indexed` files ingested first), once without
   the embedding and parse services (`--no-embed-service --no-parse-service`: each run loads its
   models and starts Docling) and once with them. Small files are written one at a time; for each, the
   time from its write to its first hit through `POST /v1/query`, p50/p95 (aim: interval + 5 s); the
   runs' time by part (queued, launch = process start and code load, each step, other) from the
   Dagster event log; the peak RSS of each part of `up` and of the largest run (polled process
   trees). `--clients N` threads ask the API meanwhile.
2. Query latency: the rows of `bench/query.py` (10k and 100k text rows from the MMLongBench slice,
   which needs ../shared/eval) written once; then `mmrag api` on that data dir answers the slice's
   questions (warm p50/p95 over HTTP, mode naive, no images), and `mmrag query` without a server
   (a fresh process per question: load + query) for a few of them.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/service.py [--files 8] [--interval 2] [--indexed 0] [--clients 0]
                              [--modes cold,warm] [--sizes 10000,100000] [--skip-latency] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
from rss_tools import RssSampler  # noqa: E402 - the per-part memory sampler the soak uses too
WORDS = ("heron egret bittern ibis spoonbill stork crane rail coot gallinule plover lapwing dotterel turnstone "
         "sanderling dunlin knot stint curlew godwit whimbrel snipe woodcock phalarope avocet stilt").split()


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * (len(xs) - 1) + 0.5))]


def _env(home: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMRAG_") and k != "DAGSTER_HOME"}
    env.update(MMRAG_HOME=str(home), MMRAG_CLIP_PRETRAINED="random", HF_HUB_OFFLINE="1", **extra)
    return env


def _wait_http(url: str, timeout: float, proc=None) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode})")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise TimeoutError(url)


def _seed(home: Path, docs: Path, n: int, extra: dict) -> float:
    """`n` small Markdown files indexed before `up` starts (one `mmrag ingest`); returns its seconds."""
    for i in range(n):
        (docs / f"old_{i:05d}.md").write_text(f"# Old note {i}\n\nAn older note about {WORDS[i % len(WORDS)]} {i}.\n")
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "mmrag.cli", "ingest", str(docs), "--json"], env=_env(home, **extra), cwd=REPO,
                   check=True, capture_output=True, timeout=7200)
    return time.monotonic() - t0


MODES = ("cold", "warm", "warm-llm", "warm-llm-embed")
QUERY_MODE = "naive"  # --query-mode: how the freshness probe asks (mix: with the graph context)


def freshness(files: int, interval: int, mode: str, indexed: int = 0, clients: int = 0) -> dict:
    """`mmrag up` on a fresh data dir (`indexed` files ingested first); `files` small files written one at
    a time, each waited for through `POST /v1/query`. Modes: `warm` with the embedding and parse services
    (today's default), `cold` without (`--no-embed-service --no-parse-service`: each run loads its models);
    `warm-llm` as warm with the chat model on the loopback model server (answering at once), and
    `warm-llm-embed` with the text embeddings there too (MMRAG_TEXT_EMBED_BACKEND=openai)."""
    import contextlib

    assert mode in MODES, mode
    warm, llm_on, served_embed = mode != "cold", "llm" in mode, mode.endswith("embed")
    with contextlib.ExitStack() as stack:
        extra: dict[str, str] = {}
        if llm_on:
            from openai_server import FakeOpenAIServer, lightrag_aware

            server = stack.enter_context(FakeOpenAIServer(models=("fake-llm", "fake-vlm", "fake-embed"),
                                                          embedding_dim=64))
            server.responder = lightrag_aware
            extra.update(MMRAG_LLM_URL=server.base_url, MMRAG_LLM_MODEL="fake-llm", MMRAG_VLM_MODEL="fake-vlm")
            if served_embed:
                extra.update(MMRAG_TEXT_EMBED_BACKEND="openai", MMRAG_TEXT_EMBED_MODEL="fake-embed",
                             MMRAG_TEXT_EMBED_URL=server.base_url)
        out = _freshness(files, interval, warm, indexed, clients, extra)
        out["mode"] = mode
        if llm_on:
            out["model_requests"] = len(server.requests)
        return out


def _freshness(files: int, interval: int, warm: bool, indexed: int, clients: int, extra: dict) -> dict:
    import httpx

    from mmrag.serve.supervisor import free_port

    tmp = Path(tempfile.mkdtemp(prefix="mmrag-service-bench-"))
    docs, home = tmp / "docs", tmp / "home"
    docs.mkdir()
    seed_s = _seed(home, docs, indexed, extra) if indexed else 0.0
    (docs / "seed.md").write_text("# Seed\n\nA seed file so that the first run loads the models.\n")
    api_port = free_port()
    api = f"http://127.0.0.1:{api_port}"
    log = open(tmp / "up.log", "wb")
    flags = [] if warm else ["--no-embed-service", "--no-parse-service"]
    proc = subprocess.Popen([sys.executable, "-m", "mmrag.cli", "up", str(docs), "--api-port", str(api_port),
                             "--ui-port", str(free_port()), "--dagster-port", str(free_port()), *flags],
                            env=_env(home, MMRAG_SENSOR_INTERVAL_S=str(interval), **extra), cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT)
    rss = RssSampler(proc.pid)
    stop = threading.Event()
    load = {"ok": 0, "failed": 0, "lat": []}

    def client(i: int) -> None:
        n = 0
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                r = httpx.post(f"{api}/v1/query", json={"question": f"{WORDS[(i + n) % len(WORDS)]} nests", "top_k": 5},
                               timeout=60)
                ok = r.status_code == 200
            except httpx.TransportError:
                ok = False
            load["ok" if ok else "failed"] += 1
            load["lat"].append(time.perf_counter() - t0)
            n += 1

    def found(name: str, word: str) -> bool:
        r = httpx.post(f"{api}/v1/query", json={"question": f"{word} survey notes", "top_k": 10, "mode": QUERY_MODE,
                                                "images": False}, timeout=60)
        return r.status_code == 200 and any(h["file"] == name for h in r.json()["hits"])

    t_up = time.monotonic()
    try:
        _wait_http(f"{api}/healthz", 600, proc)
        deadline = time.monotonic() + 900
        while not found("seed.md", "seed"):
            if time.monotonic() > deadline:
                raise TimeoutError("the seed file was not indexed")
            time.sleep(1)
        up_s = time.monotonic() - t_up
        time.sleep(interval + 2)  # the seed's run and its sensor tick are over
        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
        for t in threads:
            t.start()
        t_load = time.monotonic()
        per_file: dict[str, dict] = {}
        for i in range(files):
            word = f"{WORDS[i % len(WORDS)]}{i}"
            name = f"survey_{i:03d}.md"
            (docs / name).write_text(f"# Survey {i}\n\nThe {word} survey notes count {i + 3} birds at dawn.\n")
            per_file[name] = {"word": word, "written": time.time()}
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                if found(name, word):
                    per_file[name]["hit"] = time.time()
                    break
                time.sleep(0.25)
        stop.set()
        for t in threads:
            t.join(70)
        load_s = time.monotonic() - t_load
        runs = _runs(home / "dagster")
    finally:
        stop.set()
        peak = rss.result()
        if proc.poll() is None:
            proc.send_signal(2)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
    rows = []
    for name, f in per_file.items():
        lag = f.get("hit", float("nan")) - f["written"]
        rows.append({"file": name, "freshness_s": round(lag, 2)})
    lags = [r["freshness_s"] for r in rows if r["freshness_s"] == r["freshness_s"]]
    mine = [r for r in runs if r["start_key"].startswith("docs:survey_")]
    parts = {k: round(statistics.median([r["parts"].get(k, 0.0) for r in mine]), 2)
             for k in sorted({k for r in mine for k in r["parts"]})} if mine else {}
    shutil.rmtree(tmp, ignore_errors=True)
    out = {"mode": "warm services" if warm else "no services", "files": files, "indexed_before": indexed,
           "seed_ingest_s": round(seed_s, 1), "sensor_interval_s": interval, "up_ready_s": round(up_s, 1),
           "freshness_p50_s": round(statistics.median(lags), 2) if lags else None,
           "freshness_p95_s": round(_pct(lags, 0.95), 2) if lags else None, "missed": len(rows) - len(lags),
           "runs": len(mine), "run_parts_median_s": parts, "rss_peak_mb": peak, "per_file": rows}
    if clients:
        out["under_ingest"] = {"clients": clients, "seconds": round(load_s, 1), "queries_ok": load["ok"],
                               "queries_failed": load["failed"], "queries_per_s": round(load["ok"] / load_s, 2),
                               "p50_ms": round(1000 * statistics.median(load["lat"]), 1) if load["lat"] else None}
    return out


def _runs(dagster_home: Path) -> list[dict]:
    """Ingest runs: partition range and, from the event log, where each run's time went: `queued`
    (enqueued -> the daemon launches it), `launch` (launched -> the run process has loaded the code and
    starts), each step (STEP_START -> its end), `other` (the rest of the run process's life)."""
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    from dagster import DagsterEventType, DagsterInstance, RunsFilter

    out = []
    with DagsterInstance.get() as inst:
        for rec in inst.get_run_records(filters=RunsFilter(job_name="ingest_job")):
            run = rec.dagster_run
            tags = run.tags
            t: dict[str, float] = {}
            steps: dict[str, float] = {}
            opened: dict[str, float] = {}
            for e in inst.all_logs(run.run_id):
                ev = e.dagster_event
                if ev is None:
                    continue
                kind = ev.event_type
                if kind in (DagsterEventType.RUN_ENQUEUED, DagsterEventType.RUN_STARTING, DagsterEventType.RUN_START,
                            DagsterEventType.RUN_SUCCESS, DagsterEventType.RUN_FAILURE):
                    t.setdefault(kind.name, e.timestamp)
                elif kind == DagsterEventType.STEP_START:
                    opened[ev.step_key] = e.timestamp
                elif kind in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE) and ev.step_key in opened:
                    steps[ev.step_key] = e.timestamp - opened[ev.step_key]
            end = t.get("RUN_SUCCESS") or t.get("RUN_FAILURE")
            if not end or "RUN_START" not in t:
                continue
            parts = {"queued": t.get("RUN_STARTING", t["RUN_START"]) - t.get("RUN_ENQUEUED", t.get("RUN_STARTING", t["RUN_START"])),
                     "launch": t["RUN_START"] - t.get("RUN_STARTING", t["RUN_START"]), **steps}
            parts["other"] = max(0.0, (end - t["RUN_START"]) - sum(steps.values()))
            out.append({"start_key": tags.get("dagster/asset_partition_range_start") or tags.get("dagster/partition", ""),
                        "end_key": tags.get("dagster/asset_partition_range_end", ""), "parts": parts,
                        "total": end - t.get("RUN_ENQUEUED", t.get("RUN_STARTING", t["RUN_START"]))})
    return out


def latency(sizes: list[int], cold_n: int = 3) -> dict:
    import httpx

    sys.path.insert(0, str(REPO / "bench"))
    import query as qbench

    from mmrag.serve.supervisor import free_port

    if not (qbench.EVAL / "samples.jsonl").exists():
        return {"skipped": f"{qbench.EVAL} is missing"}
    home = Path(tempfile.mkdtemp(prefix="mmrag-api-bench-"))
    env = _env(home)
    subprocess.run([sys.executable, str(REPO / "bench" / "query.py"), "--phase", "write", "--home", str(home),
                    "--sizes", ",".join(map(str, sizes))], env=env, check=True, capture_output=True, text=True)
    qs = qbench.questions()
    out = {}
    for n in sizes:
        port = free_port()
        senv = {**env, "MMRAG_COLLECTION_PREFIX": f"bench{n}"}
        proc = subprocess.Popen([sys.executable, "-m", "mmrag.cli", "api", "--port", str(port)], env=senv, cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_http(f"{url}/healthz", 300, proc)
            httpx.post(f"{url}/v1/query", json={"question": qs[0], "top_k": 10, "images": False}, timeout=300)  # warm
            lat = []
            for q in qs[1:]:
                t0 = time.perf_counter()
                r = httpx.post(f"{url}/v1/query", json={"question": q, "top_k": 10, "images": False}, timeout=300)
                lat.append((time.perf_counter() - t0) * 1000)
                assert r.status_code == 200, r.text
        finally:
            proc.send_signal(2)
            proc.wait(60)
        cold = []
        for q in qs[1:1 + cold_n]:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "mmrag.cli", "query", q, "--top-k", "10", "--no-images", "--json"],
                           env=senv, cwd=REPO, check=True, capture_output=True)
            cold.append((time.perf_counter() - t0) * 1000)
        out[str(n)] = {"api_warm_p50_ms": round(statistics.median(lat), 1), "api_warm_p95_ms": round(_pct(lat, 0.95), 1),
                       "cli_cold_p50_ms": round(statistics.median(cold), 1),
                       "cold_over_warm": round(statistics.median(cold) / statistics.median(lat), 1)}
    shutil.rmtree(home, ignore_errors=True)
    return out


def _print_freshness(results: list[dict]) -> None:
    print("freshness through `mmrag up` (file written -> first hit of POST /v1/query), one file at a time:")
    cols = [r["mode"] for r in results]
    print(f"{'':34s}" + "".join(f"{c:>16s}" for c in cols))

    def row(label: str, values) -> None:
        print(f"{label:34s}" + "".join(f"{'' if v is None else v:>16}" for v in values))

    r0 = results[0]
    row("files (indexed before)", [f"{r['files']} ({r['indexed_before']})" for r in results])
    row(f"freshness p50 s (aim {r0['sensor_interval_s']}+5)", [r["freshness_p50_s"] for r in results])
    row("freshness p95 s", [r["freshness_p95_s"] for r in results])
    row("up ready (seed found) s", [r["up_ready_s"] for r in results])
    keys = sorted({k for r in results for k in r["run_parts_median_s"]})
    for k in keys:
        row(f"  run part {k} s (median)", [r["run_parts_median_s"].get(k) for r in results])
    names = sorted({k for r in results for k in r["rss_peak_mb"]})
    for k in names:
        row(f"  peak RSS {k} MB", [r["rss_peak_mb"].get(k) for r in results])
    if len(results) == 2 and results[0]["freshness_p50_s"] and results[1]["freshness_p50_s"]:
        print(f"p50 ratio {results[1]['mode']} / {results[0]['mode']}: "
              f"{results[1]['freshness_p50_s'] / results[0]['freshness_p50_s']:.2f}")
    for r in results:
        if "under_ingest" in r:
            u = r["under_ingest"]
            print(f"{r['mode']}: {u['clients']} clients while runs write: {u['queries_ok']} ok, {u['queries_failed']} "
                  f"failed in {u['seconds']} s = {u['queries_per_s']} queries/s, p50 {u['p50_ms']} ms")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=8)
    p.add_argument("--interval", type=int, default=2, help="the sensor's interval (MMRAG_SENSOR_INTERVAL_S)")
    p.add_argument("--indexed", type=int, default=0, help="small files indexed before `up` starts")
    p.add_argument("--clients", type=int, default=0, help="threads asking the API meanwhile")
    p.add_argument("--modes", default="cold,warm", help="cold (no services), warm (embedding + parse services), "
                   "warm-llm (+ the chat model on the loopback model server), warm-llm-embed (+ text embeddings there)")
    p.add_argument("--query-mode", default="naive", help="the freshness probe's query mode (naive, mix)")
    p.add_argument("--sizes", default="10000,100000")
    p.add_argument("--skip-latency", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    global QUERY_MODE
    QUERY_MODE = args.query_mode
    res = {"freshness": [freshness(args.files, args.interval, mode, args.indexed, args.clients)
                         for mode in args.modes.split(",")]}
    if not args.skip_latency:
        res["latency"] = latency([int(x) for x in args.sizes.split(",")])
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    _print_freshness(res["freshness"])
    for n, r in (res.get("latency") or {}).items():
        if n == "skipped":
            print(f"latency: skipped ({r})")
            continue
        print(f"{int(n):>7} rows: POST /v1/query warm p50 {r['api_warm_p50_ms']} ms (p95 {r['api_warm_p95_ms']}); "
              f"mmrag query cold (no server) p50 {r['cli_cold_p50_ms']} ms = {r['cold_over_warm']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
