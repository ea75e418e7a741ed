"""Benchmark (not a test): commands started together on new data dirs, and `mmrag up` started fresh.

1. `ingests`: `--rounds` rounds of `--together` `mmrag ingest`s of as many small folders, started at the
   same moment on a fresh data dir, on the embedded default (Milvus Lite) and with a Milvus server
   (`milvus-lite server`, MMRAG_MILVUS_URI); a round passes when every ingest exits 0 and every file is
   indexed. Prints passes per configuration, and each failure's last line.
2. `up`: `--starts` starts of `mmrag up` on a fresh data dir (sensor every 2 s), each waiting for a
   file written after "running" to be found through `POST /v1/query`; prints the passes and the
   seconds from start to the file found.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/first_start.py ingests [--rounds 20] [--together 2] [--modes lite,server]
    HF_HUB_OFFLINE=1 .venv/bin/python bench/first_start.py up [--starts 10]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _env(home: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMRAG_") and k != "DAGSTER_HOME"}
    env.update(MMRAG_HOME=str(home), MMRAG_CLIP_PRETRAINED="random", HF_HUB_OFFLINE="1", **extra)
    return env


def _folder(root: Path, i: int, n: int = 2) -> Path:
    root.mkdir(parents=True)
    for j in range(n):
        (root / f"n{j}.md").write_text(f"# Note {i}.{j}\n\nThe survey {i}-{j} counts grebes and coots.\n")
    return root


def _milvus_server(tmp: Path):
    from mmrag.serve import milvus_lite_server
    from mmrag.serve.supervisor import free_port, port_open

    port = free_port()
    proc = subprocess.Popen(milvus_lite_server.command(tmp / "milvus", port), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, cwd=REPO)
    deadline = time.monotonic() + 120
    while not port_open(port):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("milvus-lite server did not start")
        time.sleep(0.3)
    return proc, f"http://127.0.0.1:{port}"


def ingests(rounds: int, together: int, modes: list[str]) -> dict:
    from mmrag.serve.supervisor import stop_group

    out = {}
    for mode in modes:
        passed, failures, walls = 0, [], []
        for r in range(rounds):
            tmp = Path(tempfile.mkdtemp(prefix="mmrag-first-start-"))
            server = None
            extra = {}
            if mode == "server":
                server, uri = _milvus_server(tmp)
                extra["MMRAG_MILVUS_URI"] = uri
            folders = [_folder(tmp / f"f{i}", i) for i in range(together)]
            t0 = time.monotonic()
            procs = [subprocess.Popen([sys.executable, "-m", "mmrag.cli", "ingest", str(f), "--json"],
                                      env=_env(tmp / "home", **extra), cwd=REPO, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True) for f in folders]
            ok = True
            for p, f in zip(procs, folders):
                stdout, stderr = p.communicate(timeout=900)
                try:
                    res = json.loads(stdout)
                except ValueError:
                    res = {}
                if p.returncode != 0 or res.get("indexed") != len(list(f.iterdir())):
                    ok = False
                    last = next((ln for ln in reversed(stderr.splitlines()) if ln.strip()), "")
                    failures.append(f"round {r}: exit {p.returncode}, {res.get('indexed')} indexed: {last[:200]}")
            walls.append(time.monotonic() - t0)
            passed += ok
            if server is not None:
                stop_group(server, 30)
            shutil.rmtree(tmp, ignore_errors=True)
            print(f"{mode} round {r}: {'ok' if ok else 'FAILED'} in {walls[-1]:.1f} s", flush=True)
        out[mode] = {"rounds": rounds, "together": together, "passed": passed, "wall_p50_s": round(statistics.median(walls), 1),
                     "failures": failures}
    return out


def up_starts(starts: int) -> dict:
    import httpx

    from mmrag.serve.supervisor import free_port

    passed, found_s, failures = 0, [], []
    for i in range(starts):
        tmp = Path(tempfile.mkdtemp(prefix="mmrag-up-start-"))
        docs = tmp / "docs"
        docs.mkdir()
        api_port = free_port()
        api = f"http://127.0.0.1:{api_port}"
        log = tmp / "up.log"
        t0 = time.monotonic()
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "mmrag.cli", "up", str(docs), "--api-port", str(api_port),
                                     "--ui-port", str(free_port()), "--dagster-port", str(free_port())],
                                    env=_env(tmp / "home", MMRAG_SENSOR_INTERVAL_S="2"), cwd=REPO, stdout=out,
                                    stderr=subprocess.STDOUT)
        ok = False
        try:
            deadline = time.monotonic() + 420
            while time.monotonic() < deadline and "running;" not in log.read_text():
                if proc.poll() is not None:
                    break
                time.sleep(0.5)
            (docs / "kestrel.md").write_text(f"# Kestrel {i}\n\nThe kestrel hovers over the verge {i}.\n")
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    r = httpx.post(f"{api}/v1/query", json={"question": "Which bird hovers over the verge?",
                                                            "mode": "naive", "top_k": 3}, timeout=30)
                    if r.status_code == 200 and any(h["file"] == "kestrel.md" for h in r.json()["hits"]):
                        ok = True
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(1)
        finally:
            took = time.monotonic() - t0
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(90)
                except subprocess.TimeoutExpired:
                    proc.kill()
        passed += ok
        if ok:
            found_s.append(took)
        else:
            failures.append(f"start {i}: {log.read_text()[-600:]}")
        print(f"up start {i}: {'found the new file' if ok else 'FAILED'} after {took:.1f} s", flush=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return {"starts": starts, "passed": passed, "start_to_found_p50_s": round(statistics.median(found_s), 1) if found_s else None,
            "failures": failures}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    a = sub.add_parser("ingests")
    a.add_argument("--rounds", type=int, default=20)
    a.add_argument("--together", type=int, default=2)
    a.add_argument("--modes", default="lite,server")
    b = sub.add_parser("up")
    b.add_argument("--starts", type=int, default=10)
    args = p.parse_args()
    res = ingests(args.rounds, args.together, args.modes.split(",")) if args.what == "ingests" else up_starts(args.starts)
    print(json.dumps(res, indent=2))
    bad = [v for v in (res.values() if args.what == "ingests" else [res]) if v["passed"] != v.get("rounds", v.get("starts"))]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
