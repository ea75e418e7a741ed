"""Benchmark (not a test): what `mmrag check` costs on an index of N small files, and what the data
dir and the Dagster instance weigh per indexed file.

In a fresh MMRAG_HOME and DAGSTER_HOME (SQLite, the repo's dagster.yaml): N small Markdown files in
folders of 1,000 are ingested with `mmrag ingest` (the real pipeline, embedded defaults, no LLM);
then `mmrag check --json` runs R times (wall time of the command, and its own time per part). Sizes:
the Dagster home, the Milvus Lite dir, LightRAG, the blobs, the stage outputs and the manifest, per file.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/audit.py [--files 2700] [--repeat 2] [--pg] [--json]

`--pg`: the Dagster instance on PostgreSQL (a throwaway server from Debian's binaries, as the tests
start it: tests/pg_tools.py); its size is the database's growth over the empty schema.

Also: what the per-file asset checks took in the ingest runs (their `check_seconds` metadata), and
what one more file ingested alone (a one-file run, as the sensor usually makes) adds to the instance.
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
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
MMRAG = [sys.executable, "-m", "mmrag.cli"]


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _check_seconds(dagster_home: Path) -> dict:
    """What the per-file asset checks took in the ingest runs (each run's `check_seconds`, summed)."""
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    from dagster import AssetKey, AssetRecordsFilter, DagsterInstance

    out = {}
    with DagsterInstance.get() as instance:
        for asset in ("milvus_partitions", "lightrag_graph"):
            per_run, cursor = {}, None
            while True:
                res = instance.fetch_materializations(AssetRecordsFilter(asset_key=AssetKey(asset)), limit=10_000,
                                                      cursor=cursor)
                for r in res.records:
                    meta = r.asset_materialization.metadata
                    if "check_seconds" in meta:
                        per_run[r.run_id] = meta["check_seconds"].value
                if not res.has_more:
                    break
                cursor = res.cursor
            out[asset] = {"runs": len(per_run), "seconds": round(sum(per_run.values()), 2)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=2700)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--keep", action="store_true")
    p.add_argument("--pg", action="store_true", help="Dagster on PostgreSQL instead of SQLite")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    if a.pg:
        from pg_tools import postgres_server

        with postgres_server() as new_db:
            if new_db is None:
                sys.exit("no PostgreSQL server binaries (scripts/setup.sh installs the postgresql package)")
            run(a, new_db())
    else:
        run(a, None)


def _pg_size(url: str) -> int:
    import psycopg2

    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_database_size(current_database())")
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def run(a, pg_url: str | None) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="mmrag-bench-audit-"))
    root, home, dhome = tmp / "notes", tmp / "home", tmp / "dagster"
    dhome.mkdir()
    shutil.copy(REPO / "dagster.yaml", dhome / "dagster.yaml")
    for i in range(a.files):
        f = root / f"d{i // 1000:03d}" / f"f{i:06d}.md"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(f"# Note {i}\n\nSurvey note number {i} counts {i % 97} teal and {i % 13} wigeon.\n\n"
                     f"## Where\n\nPond {i % 31}, seen on day {i % 365}.\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMRAG_")}
    env.update(MMRAG_HOME=str(home), DAGSTER_HOME=str(dhome), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    pg_base = 0
    if pg_url:  # the CLI writes $MMRAG_HOME/dagster/dagster.yaml with the Postgres storage
        env.pop("DAGSTER_HOME")
        from mmrag.orchestration.instance import with_driver

        env["MMRAG_DAGSTER_PG_URL"] = with_driver(pg_url)
        dhome = home / "dagster"
        subprocess.run([sys.executable, "-c", "from mmrag.orchestration.instance import dagster_instance; "
                        "from mmrag.config import Settings; dagster_instance(Settings.from_env()).get_runs()"],
                       env=env, capture_output=True, cwd=REPO, check=True)  # the yaml and the empty schema
        pg_base = _pg_size(pg_url.replace("postgresql+psycopg2://", "postgresql://"))
    try:
        t = time.perf_counter()
        ing = subprocess.run([*MMRAG, "ingest", str(root), "--source", "notes", "--json"], env=env,
                             capture_output=True, text=True, cwd=REPO)
        ingest_s = time.perf_counter() - t
        if ing.returncode != 0:
            sys.exit(f"ingest failed ({ing.returncode}): {ing.stderr[-2000:]}")
        indexed = json.loads(ing.stdout)["indexed"]
        if pg_url:
            os.environ["MMRAG_DAGSTER_PG_URL"] = env["MMRAG_DAGSTER_PG_URL"]
        checks = _check_seconds(dhome)
        walls, parts = [], []
        for _ in range(a.repeat):
            t = time.perf_counter()
            chk = subprocess.run([*MMRAG, "check", "--json"], env=env, capture_output=True, text=True, cwd=REPO)
            walls.append(time.perf_counter() - t)
            res = json.loads(chk.stdout)
            if not res["before"]["clean"]:
                sys.exit(f"the fresh index does not check clean: {res['before']['summary']}")
            parts.append(res["before"]["seconds"])
        # The sensor's usual: one new file, one run. What does the instance grow by per such run?
        size = lambda: _size(dhome) + (_pg_size(pg_url) - pg_base if pg_url else 0)  # noqa: E731
        before, singles = size(), 5
        for i in range(singles):
            (root / "new").mkdir(exist_ok=True)
            (root / "new" / f"n{i}.md").write_text(f"# New note {i}\n\nA late note about {i} shovelers.\n")
            one = subprocess.run([*MMRAG, "ingest", str(root), "--source", "notes", "--json"], env=env,
                                 capture_output=True, text=True, cwd=REPO)
            if one.returncode != 0:
                sys.exit(f"one-file ingest failed: {one.stderr[-2000:]}")
        one_file_run_kb = round((size() - before) / singles / 1e3, 1)
        indexed += singles
        sizes = {"dagster instance" + (" (PostgreSQL + its home)" if pg_url else ""): size(), "milvus": _size(home / "milvus.db") + _size(home / "milvus"),
                 "lightrag": _size(home / "lightrag"), "blobs": _size(home / "blobs"),
                 "stage outputs": _size(home / "stages"), "manifest": _size(home / "state.sqlite"),
                 "whole MMRAG_HOME": _size(home)}
        out = {"files": a.files, "indexed": indexed, "ingest_s": round(ingest_s, 1), "asset_checks_s": checks,
               "instance_kb_per_one_file_run": one_file_run_kb,
               "check_wall_s": [round(w, 2) for w in walls], "check_wall_s_median": round(statistics.median(walls), 2),
               "check_parts_s": parts[-1],
               "bytes_per_file": {k: round(v / max(indexed, 1)) for k, v in sizes.items()},
               "mb": {k: round(v / 1e6, 1) for k, v in sizes.items()}}
        if a.json:
            print(json.dumps(out, indent=2))
        else:
            print(f"{indexed} files indexed in {out['ingest_s']} s")
            print(f"asset checks in the ingest runs: {checks}")
            print(f"a one-file run (the sensor's usual) adds {one_file_run_kb} KB to the instance")
            print(f"mmrag check: {out['check_wall_s_median']} s wall (median of {a.repeat}); parts {out['check_parts_s']}")
            for k, v in sizes.items():
                print(f"  {k:18s} {v / 1e6:8.1f} MB  {v / max(indexed, 1) / 1e3:8.1f} KB per file")
    finally:
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}", file=sys.stderr)


if __name__ == "__main__":
    main()
