"""Benchmark (not a test): the sync at scale. One sensor tick over N unchanged files, adding N dynamic
partitions, and a one-file ingest run's overhead with N partitions in the instance.

For each N (default 10k and 50k) in a fresh data dir and Dagster home (SQLite, the repo's dagster.yaml):
1. N small Markdown files in folders of 1,000, and a manifest that says each is indexed with its hash,
   size and mtime (written directly: this measures the sync, not the pipeline);
2. `instance.add_dynamic_partitions` of the N partition keys, in batches of 10,000 (wall time);
3. the `watch_folders` sensor evaluated 3 times (as the daemon does, `build_sensor_context`): wall
   time of each tick (median shown) and how many files it hashed (aim: 0) and requested (aim: 0);
4. one new file, then one tick and the ingest run it requests, executed in this process: the run's
   wall time, and its time from RUN_START to the first STEP_START (the partition-dependent part).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/sensor.py [--sizes 10000,50000] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SOURCE = "bench"


def _write_files(root: Path, n: int) -> list[tuple[str, str, int, float]]:
    out = []
    for i in range(n):
        rel = f"d{i // 1000:03d}/f{i:06d}.md"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data = f"# Note {i}\n\nSurvey note number {i} counts {i % 97} teal.\n".encode()
        path.write_bytes(data)
        st = path.stat()
        out.append((rel, hashlib.sha256(data).hexdigest(), st.st_size, st.st_mtime))
    return out


def _fill_manifest(state: Path, root: Path, files, fingerprint: str) -> None:
    from mmrag.manifest import FILE_COLUMNS, Manifest

    Manifest(state)  # schema
    now = time.time()
    rows = []
    for rel, digest, size, mtime in files:
        rec = {"file_key": f"{SOURCE}:{rel}", "source": SOURCE, "root": str(root), "rel_path": rel,
               "content_hash": digest, "size": size, "mtime": mtime, "mime": "text/markdown", "status": "indexed",
               "fingerprint": fingerprint, "parser": "markdown", "text_rows": 1, "image_rows": 0, "updated_at": now,
               "attempts": 0}
        rows.append([rec.get(c) for c in FILE_COLUMNS])
    con = sqlite3.connect(state)
    with con:
        con.executemany(f"INSERT INTO files ({','.join(FILE_COLUMNS)}) VALUES ({','.join('?' * len(FILE_COLUMNS))})",
                        rows)
        con.execute("INSERT OR REPLACE INTO sources (name, root) VALUES (?, ?)", (SOURCE, str(root)))
    con.close()


def one_size(n: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f"mmrag-sensor-bench-{n}-"))
    root, home = tmp / "docs", tmp / "home"
    (home / "dagster").mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster" / "dagster.yaml")
    for var in [v for v in os.environ if v.startswith("MMRAG_")]:
        del os.environ[var]
    os.environ.update(MMRAG_HOME=str(home), DAGSTER_HOME=str(home / "dagster"), MMRAG_CLIP_PRETRAINED="random",
                      HF_HUB_OFFLINE="1", DAGSTER_DISABLE_TELEMETRY="1", MMRAG_WATCH=f"{SOURCE}={root}")
    from dagster import (
        AddDynamicPartitionsRequest,
        DagsterEventType,
        DagsterInstance,
        build_sensor_context,
    )

    from mmrag.config import Settings
    from mmrag.definitions import defs
    from mmrag.sources import sync
    from mmrag_resources.data_dir import DataDirResource
    from mmrag_resources.milvus import MilvusResource
    from schedules.sensors import watch_folders

    t0 = time.perf_counter()
    files = _write_files(root, n)
    write_s = time.perf_counter() - t0
    settings = Settings.from_env()
    _fill_manifest(settings.state_path, root, files, settings.fingerprint())
    keys = [f"{SOURCE}:{rel}" for rel, *_ in files]
    out: dict = {"files": n, "write_files_s": round(write_s, 1)}
    with DagsterInstance.get() as instance:
        t0 = time.perf_counter()
        for i in range(0, n, 10_000):
            instance.add_dynamic_partitions("source_files", keys[i:i + 10_000])
        out["add_partitions_s"] = round(time.perf_counter() - t0, 2)

        hashed = {"n": 0}
        real_hash = sync._hash_source

        def counting(root_, rel):
            hashed["n"] += 1
            return real_hash(root_, rel)

        sync._hash_source = counting

        def tick(cursor=None):
            ctx = build_sensor_context(instance=instance, cursor=cursor,
                                       resources={"data_dir": DataDirResource(), "milvus": MilvusResource()})
            t = time.perf_counter()
            res = watch_folders(ctx)
            return res, time.perf_counter() - t

        ticks, requested = [], 0
        for _ in range(3):
            res, dt = tick()
            ticks.append(dt)
            requested += len(getattr(res, "run_requests", None) or [])
        out.update(tick_s_median=round(statistics.median(ticks), 2), tick_s=[round(t, 2) for t in ticks],
                   files_hashed=hashed["n"], runs_requested=requested)

        # One new file: the tick that finds it, and the run it asks for (in this process).
        (root / "d000" / "new.md").write_text("# New\n\nA newly written note about pintails.\n")
        res, dt = tick()
        out["tick_with_one_new_file_s"] = round(dt, 2)
        for req in res.dynamic_partitions_requests:
            if isinstance(req, AddDynamicPartitionsRequest):
                instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
        [rr] = res.run_requests
        job = defs.resolve_job_def(rr.job_name)
        t = time.perf_counter()
        quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
        result = job.execute_in_process(instance=instance, tags=rr.tags, run_config={**(rr.run_config or {}), **quiet})
        out["one_file_run_s"] = round(time.perf_counter() - t, 1)
        events = instance.all_logs(result.run_id)
        start = next(e.timestamp for e in events if e.dagster_event and e.dagster_event.event_type == DagsterEventType.RUN_START)
        step = next(e.timestamp for e in events
                    if e.dagster_event and e.dagster_event.event_type == DagsterEventType.STEP_START)
        out["run_start_to_first_step_s"] = round(step - start, 2)
        out["run_ok"] = result.success
        sync._hash_source = real_hash
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10000,50000")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    res = [one_size(int(n)) for n in args.sizes.split(",")]
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    for r in res:
        print(f"{r['files']:>6} files: add partitions {r['add_partitions_s']} s; sensor tick p50 {r['tick_s_median']} s "
              f"({r['tick_s']}), {r['files_hashed']} hashed, {r['runs_requested']} runs requested; "
              f"tick with 1 new file {r['tick_with_one_new_file_s']} s; its run {r['one_file_run_s']} s "
              f"(RUN_START → first step {r['run_start_to_first_step_s']} s)")
    if len(res) > 1:
        a, b = res[0], res[-1]
        print(f"tick {b['files']}/{a['files']}: {b['tick_s_median'] / max(a['tick_s_median'], 1e-9):.1f}x; "
              f"run start-up {b['run_start_to_first_step_s'] / max(a['run_start_to_first_step_s'], 1e-9):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
