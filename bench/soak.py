"""Benchmark (not a test): the long soak. `mmrag up` on the embedded defaults with the loopback model
server (LLM on, 0.1 s a reply, 5 % of requests answered 500); 1,000 small files and 20 office files arrive
over ~10 minutes (creates, edits, deletes, a burst of 200 at once), 4 clients query all the while, and the
embedding service, the parse service, the daemon and one ingest run are SIGKILLed at random moments.
Afterwards the whole index is compared with a clean ingest of the final folder. `tests/soak_tools.py`
plays it (and `tests/test_soak.py` a short version in CI).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/soak.py [--small 1000] [--office 20] [--minutes 10] [--burst 200]
                                                    [--clients 4] [--run-kills 1] [--seed 1] [--keep] [--json]

Prints queries/s, latency p50/p95, freshness p50/p95 (file written -> first hit), peak RSS by part and its
growth (last third over middle third of the run), restarts, kills, the time to settle, and the differences
(0 expected).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))


def main() -> int:
    from soak_tools import Plan, soak

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", type=int, default=1000)
    p.add_argument("--office", type=int, default=20)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--burst", type=int, default=200)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--latency", type=float, default=0.1)
    p.add_argument("--errors", type=float, default=0.05)
    p.add_argument("--settle-min", type=float, default=30.0, help="how long the index may take to settle afterwards")
    p.add_argument("--run-kills", type=int, default=1, help="ingest runs SIGKILLed in flight (each at a random moment)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--keep", action="store_true", help="keep the work folder (printed)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    plan = Plan(small=a.small, office=a.office, minutes=a.minutes, burst=a.burst, clients=a.clients,
                latency_s=a.latency, error_rate=a.errors, seed=a.seed,
                kills=("embed", "parse", "daemon") + ("run",) * a.run_kills, settle_s=60 * a.settle_min)
    work = Path(tempfile.mkdtemp(prefix="mmrag-soak-"))
    try:
        res = soak(plan, work, say=lambda s: print(s, file=sys.stderr, flush=True))
    except BaseException:
        print(f"the soak failed; its work folder (up.log, home/logs) is kept: {work}", file=sys.stderr)
        raise
    if a.keep:
        print(f"work folder: {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    if a.json:
        out = asdict(res)
        out.pop("log")
        print(json.dumps(out, indent=2))
        return 0 if not res.differences else 1
    q, f = res.queries, res.freshness
    print(f"soak: {a.small} small + {a.office} office files over {a.minutes} min ({res.events}), {a.clients} clients, "
          f"LLM {a.latency} s/reply with {a.errors:.0%} errors; {res.seconds:.0f} s in all")
    print(f"queries: {q['ok']} ok in {q['seconds']} s = {q['per_s']}/s, p50 {q['p50_ms']} ms, p95 {q['p95_ms']} ms; "
          f"by status {q['by_status']}")
    print(f"freshness (write -> first hit, {f['found']}/{f['probes']} probes): p50 {f['p50_s']} s, p95 {f['p95_s']} s")
    print(f"settled {res.settle_s} s after the schedule ended; {res.files_final} files in the final folder")
    print("kills: " + "; ".join(f"{part} at {t} s: {what}" for part, t, what in res.kills))
    print(f"restarts by part: {res.restarts}")
    print("peak RSS MB by part: " + ", ".join(f"{k} {v}" for k, v in res.rss_peak_mb.items()))
    print("RSS growth (peak of the last third / middle third): " + ", ".join(f"{k} {v}" for k, v in res.rss_growth.items()))
    print(f"up exited {res.up_exit}; left running: {res.left_running or 'nothing'}")
    print(f"non-200 answers (first 20): {res.bad_answers[:20] or 'none'}")
    print(f"whole-index differences with a clean ingest: {len(res.differences)}; dangling vectors: {len(res.dangling)}")
    for d in res.differences[:20]:
        print("  " + d)
    return 0 if not res.differences and not res.dangling else 1


if __name__ == "__main__":
    sys.exit(main())
