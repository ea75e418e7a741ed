"""Benchmark (not a test): SIGKILL of `mmrag ingest` at random moments, under load, then a recovery
ingest, and the whole index compared with a clean run's (Milvus rows, LightRAG's graph and stores,
the manifest, stage outputs: `tests/crash_tools.index_state`). The named kill points of
`tests/test_crash.py` cover each step boundary on a quiet machine; this covers the moments in between,
and the orderings that only a loaded machine reaches (busy processes take the cores beside it).

Each round: a fresh copy of a data dir holding a clean ingest of version 0 of a small corpus; version
1 written (an edit, a new file, a deletion); `mmrag ingest` started and killed after a random delay
(uniform over the duration of an unkilled ingest); `mmrag ingest` again; compared with a clean ingest
of version 1. The LLM is the loopback model server (answers after `--latency` s).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/kill_rounds.py [--rounds 20] [--load 2] [--latency 0.05] [--seed 1]

Prints per round the kill delay, whether the killed run had finished, the differences (0 expected),
and the recovery's seconds; then the rounds with differences and each difference.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))


def _busy(n: int) -> list[subprocess.Popen]:
    """`n` processes that each keep a core busy (the load beside the ingest)."""
    return [subprocess.Popen([sys.executable, "-c", "while True:\n    sum(i * i for i in range(10000))"])
            for _ in range(n)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--load", type=int, default=2, help="busy processes beside the ingest")
    p.add_argument("--latency", type=float, default=0.05, help="seconds before each model reply")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    from crash_tools import dangling, diff, env_for, index_state, new_home
    from openai_server import FakeOpenAIServer, lightrag_aware
    from test_crash import _corpus_v0, _corpus_v1

    rng = random.Random(args.seed)
    base = Path(tempfile.mkdtemp(prefix="mmrag-kill-rounds-"))
    rounds = []
    load = _busy(args.load)
    try:
        with FakeOpenAIServer(latency_s=args.latency) as llm:
            llm.responder = lightrag_aware
            llm_env = {"MMRAG_LLM_URL": llm.base_url, "MMRAG_LLM_MODEL": "fake-llm", "MMRAG_VLM_MODEL": "fake-vlm",
                       "MMRAG_LLM_RETRIES": "0"}

            def ingest(home: Path, root: Path, kill_after: float | None = None) -> tuple[int, float]:
                cmd = [sys.executable, "-m", "mmrag.cli", "ingest", str(root), "--source", "docs", "--json"]
                t0 = time.monotonic()
                proc = subprocess.Popen(cmd, env=env_for(home, **llm_env), cwd=REPO, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True)
                if kill_after is None:
                    _, err = proc.communicate(timeout=900)
                    if proc.returncode != 0:
                        raise RuntimeError(f"ingest failed ({proc.returncode}):\n{err[-3000:]}")
                    return proc.returncode, time.monotonic() - t0
                try:
                    proc.wait(kill_after)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                return proc.returncode, time.monotonic() - t0

            root0 = _corpus_v0(base / "docs0")
            home0 = new_home(base / "home0")
            ingest(home0, root0)
            clean_home, clean_root = base / "home-clean", base / "docs-clean"
            shutil.copytree(home0, clean_home, symlinks=True)
            shutil.copytree(root0, clean_root)
            _corpus_v1(clean_root)
            _, full_s = ingest(clean_home, clean_root)
            clean = index_state(clean_home)
            print(f"clean ingest of version 1: {full_s:.1f} s (kills land uniformly in 0.5 .. {full_s:.1f} s)", flush=True)
            for i in range(args.rounds):
                home, root = base / f"home-{i}", base / f"docs-{i}"
                shutil.copytree(home0, home, symlinks=True)
                shutil.copytree(root0, root)
                _corpus_v1(root)
                delay = rng.uniform(0.5, full_s)
                code, _ = ingest(home, root, kill_after=delay)
                _, rec_s = ingest(home, root)
                state = index_state(home)
                d = diff(clean, state) + [f"dangling: {x}" for x in dangling(state)]
                row = {"round": i, "kill_after_s": round(delay, 2), "killed": code == -9, "differences": len(d),
                       "recovery_s": round(rec_s, 1), "diff": d[:20]}
                rounds.append(row)
                print(f"round {i:2d}: kill after {delay:5.1f} s ({'killed' if code == -9 else f'exited {code}'}), "
                      f"recovery {rec_s:5.1f} s, {len(d)} differences", flush=True)
                shutil.rmtree(home, ignore_errors=True)
                shutil.rmtree(root, ignore_errors=True)
    finally:
        for b in load:
            b.kill()
        shutil.rmtree(base, ignore_errors=True)
    bad = [r for r in rounds if r["differences"]]
    print(f"{len(rounds)} rounds with {args.load} busy processes beside, LLM latency {args.latency} s: "
          f"{len(bad)} with differences, {sum(r['killed'] for r in rounds)} killed mid-run")
    for r in bad:
        print(f"round {r['round']} (kill after {r['kill_after_s']} s):\n  " + "\n  ".join(r["diff"]))
    if args.json:
        print(json.dumps(rounds, indent=2))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
