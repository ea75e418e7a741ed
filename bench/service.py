"""Benchmark (not a test): the service. Freshness and queries under ingest through `mmrag up`, and the
query API's warm latency against today's cold `mmrag query` at 10k and 100k rows.

1. Freshness: `mmrag up` on a fresh data dir (no LLM, CLIP with random weights, the sensor every
   `--interval` s). Files are written to the watched folder in batches; for each file, the time from
   its write to its first hit through `POST /v1/query`, p50/p95, next to the aim: sensor interval +
   the file's ingest run (from the Dagster run's start and end) + 5 s. Meanwhile 4 client threads
   ask the API without pause: queries/s and failures while runs write.
2. Query latency: the rows of `bench/query.py` (10k and 100k text rows from the MMLongBench slice,
   which needs ../shared/eval) written once; then `mmrag api` on that data dir answers the slice's
   questions (warm p50/p95 over HTTP, mode naive, no images), and `mmrag query` without a server
   (a fresh process per question: load + query) for a few of them.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/service.py [--files 20] [--batch 5] [--interval 5]
                                                      [--sizes 10000,100000] [--skip-latency] [--json]
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


def freshness(files: int, batch: int, interval: int) -> dict:
    import httpx

    from mmrag.serve.supervisor import free_port

    tmp = Path(tempfile.mkdtemp(prefix="mmrag-service-bench-"))
    docs, home = tmp / "docs", tmp / "home"
    docs.mkdir()
    (docs / "seed.md").write_text("# Seed\n\nA seed file so that the first run loads the models.\n")
    api_port = free_port()
    api = f"http://127.0.0.1:{api_port}"
    log = open(tmp / "up.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "mmrag.cli", "up", str(docs), "--api-port", str(api_port),
                             "--ui-port", str(free_port()), "--dagster-port", str(free_port())],
                            env=_env(home, MMRAG_SENSOR_INTERVAL_S=str(interval)), cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT)
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
        r = httpx.post(f"{api}/v1/query", json={"question": f"{word} survey notes", "top_k": 10}, timeout=60)
        return r.status_code == 200 and any(h["file"] == name for h in r.json()["hits"])

    try:
        _wait_http(f"{api}/healthz", 300, proc)
        deadline = time.monotonic() + 600
        while not found("seed.md", "seed"):
            if time.monotonic() > deadline:
                raise TimeoutError("the seed file was not indexed")
            time.sleep(1)
        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(4)]
        for t in threads:
            t.start()
        t_load = time.monotonic()
        per_file: dict[str, dict] = {}
        for b in range(0, files, batch):
            names = []
            for i in range(b, min(b + batch, files)):
                word = f"{WORDS[i % len(WORDS)]}{i}"
                name = f"survey_{i:03d}.md"
                (docs / name).write_text(f"# Survey {i}\n\nThe {word} survey notes count {i + 3} birds at dawn.\n")
                per_file[name] = {"word": word, "written": time.time()}
                names.append(name)
            pending = set(names)
            deadline = time.monotonic() + 900
            while pending and time.monotonic() < deadline:
                for name in sorted(pending):
                    if found(name, per_file[name]["word"]):
                        per_file[name]["hit"] = time.time()
                        pending.discard(name)
                time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(70)
        load_s = time.monotonic() - t_load
        runs = _runs(home / "dagster")
    finally:
        stop.set()
        if proc.poll() is None:
            proc.send_signal(2)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
    rows = []
    for name, f in per_file.items():
        run = next((r for r in runs if r["start_key"] <= f"docs:{name}" <= r["end_key"] and r["start"] >= f["written"] - 1), None)
        run_s = run["end"] - run["start"] if run else None
        lag = f.get("hit", float("nan")) - f["written"]
        aim = interval + run_s + 5 if run_s is not None else None
        rows.append({"file": name, "freshness_s": round(lag, 2), "run_s": round(run_s, 1) if run_s else None,
                     "aim_s": round(aim, 1) if aim else None, "within_aim": bool(aim and lag <= aim)})
    lags = [r["freshness_s"] for r in rows if r["freshness_s"] == r["freshness_s"]]
    shutil.rmtree(tmp, ignore_errors=True)
    return {"files": files, "batch": batch, "sensor_interval_s": interval,
            "freshness_p50_s": round(statistics.median(lags), 2), "freshness_p95_s": round(_pct(lags, 0.95), 2),
            "within_aim": sum(r["within_aim"] for r in rows), "per_file": rows,
            "under_ingest": {"seconds": round(load_s, 1), "queries_ok": load["ok"], "queries_failed": load["failed"],
                             "queries_per_s": round(load["ok"] / load_s, 2),
                             "p50_ms": round(1000 * statistics.median(load["lat"]), 1) if load["lat"] else None}}


def _runs(dagster_home: Path) -> list[dict]:
    """Ingest runs with their partition range and start/end times (the Dagster instance)."""
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    from dagster import DagsterInstance, RunsFilter

    out = []
    with DagsterInstance.get() as inst:
        for rec in inst.get_run_records(filters=RunsFilter(job_name="ingest_job")):
            tags = rec.dagster_run.tags
            if rec.start_time and rec.end_time:
                out.append({"start_key": tags.get("dagster/asset_partition_range_start", ""),
                            "end_key": tags.get("dagster/asset_partition_range_end", ""),
                            "start": rec.start_time, "end": rec.end_time})
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=20)
    p.add_argument("--batch", type=int, default=5)
    p.add_argument("--interval", type=int, default=5, help="the sensor's interval (MMRAG_SENSOR_INTERVAL_S)")
    p.add_argument("--sizes", default="10000,100000")
    p.add_argument("--skip-latency", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    res = {"freshness": freshness(args.files, args.batch, args.interval)}
    if not args.skip_latency:
        res["latency"] = latency([int(x) for x in args.sizes.split(",")])
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    f = res["freshness"]
    print(f"freshness over {f['files']} files (batches of {f['batch']}, sensor every {f['sensor_interval_s']} s): "
          f"p50 {f['freshness_p50_s']} s, p95 {f['freshness_p95_s']} s; within the aim (interval + run + 5 s): "
          f"{f['within_aim']}/{f['files']}")
    u = f["under_ingest"]
    print(f"4 clients while runs write: {u['queries_ok']} ok, {u['queries_failed']} failed in {u['seconds']} s = "
          f"{u['queries_per_s']} queries/s, p50 {u['p50_ms']} ms")
    for n, r in (res.get("latency") or {}).items():
        if n == "skipped":
            print(f"latency: skipped ({r})")
            continue
        print(f"{int(n):>7} rows: POST /v1/query warm p50 {r['api_warm_p50_ms']} ms (p95 {r['api_warm_p95_ms']}); "
              f"mmrag query cold (no server) p50 {r['cli_cold_p50_ms']} ms = {r['cold_over_warm']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
