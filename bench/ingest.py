"""Ingest benchmark (not a test): wall time, peak RSS, no-change re-ingest and a per-stage breakdown.

    .venv/bin/python bench/ingest.py [--corpus DIR] [--copies N] [--include-media] [--bad] [--keep] [--json]

Builds a corpus of >= 200 files by replicating the sample corpus (one subfolder per copy, every
text-like file made unique per copy), runs `mmrag ingest ROOT --source bench --json` as a child
process against a fresh MMRAG_HOME (DAGSTER_HOME unset, so the CLI uses $MMRAG_HOME/dagster), with
MMRAG_CLIP_PRETRAINED=random and HF_HUB_OFFLINE=1, then runs the same ingest again with nothing
changed. The first ingest's wall time is split by the step timings in the Dagster event log of the
runs it made. `--bad` adds the bad inputs (tests/corpus_gen.py: the bad corpus and the pathological
inputs the per-file limits stop) in two subfolders, and ingests them alone in a second fresh data dir
to measure what they cost. All figures come from one invocation of this script.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO / "tests" / "corpus" / "sample"
MEDIA_EXT = {".wav", ".mp3", ".flac", ".ogg", ".m4a", ".aac", ".mp4", ".mov", ".avi", ".mkv", ".webm",
             ".vtt", ".srt"}
TEXT_LIKE = {".md", ".markdown", ".txt", ".rst", ".csv", ".html", ".htm", ".xhtml", ".vtt", ".srt"}
MODEL_STEPS = ("parsed_blocks", "modal_descriptions", "embeddings")
INDEX_STEPS = ("milvus_partitions", "lightrag_graph")
RAW_STEPS = ("raw_files",)
# Log lines of mmrag.models.embedders for a model load (logged at INFO).
LOAD_MARKERS = {"text embedder": "loading text embedder", "CLIP": "loading CLIP"}
TARGET_FILES = 200


# -- corpus --------------------------------------------------------------------------------------
def _unique_suffix(ext: str, copy: int) -> bytes:
    line = f"mmrag bench copy {copy}"
    if ext in (".html", ".htm", ".xhtml"):
        return f"\n<p>{line}</p>\n".encode()
    if ext == ".csv":
        return f"\n{line},{copy}\n".encode()
    if ext in (".vtt", ".srt"):
        return f"\n\nNOTE {line}\n".encode()
    return f"\n\n{line}\n".encode()


def source_files(corpus: Path, include_media: bool) -> list[Path]:
    files = sorted(p for p in corpus.rglob("*") if p.is_file() and not p.name.startswith("."))
    return [p for p in files if include_media or p.suffix.lower() not in MEDIA_EXT]


def build_corpus(corpus: Path, dest: Path, copies: int, include_media: bool) -> int:
    files = source_files(corpus, include_media)
    n = 0
    for c in range(copies):
        sub = dest / f"copy_{c:03d}"
        for src in files:
            out = sub / src.relative_to(corpus)
            out.parent.mkdir(parents=True, exist_ok=True)
            ext = src.suffix.lower()
            if ext in TEXT_LIKE:
                data = src.read_bytes()
                if not data.endswith(b"\n"):
                    data += b"\n"
                out.write_bytes(data + _unique_suffix(ext, c))
            else:
                shutil.copy2(src, out)  # identical bytes, but a different partition key per copy
            n += 1
    return n


# -- running the CLI -----------------------------------------------------------------------------
class TreeRSS(threading.Thread):
    """Polls the summed RSS of a process and its descendants; keeps the peak."""

    def __init__(self, pid: int, every_s: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.every_s, self.peak, self.stop = pid, every_s, 0, threading.Event()

    def run(self):
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self.stop.is_set():
            total = 0
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                break
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self.stop.wait(self.every_s)


def run_ingest(cmd: list[str], env: dict, log_path: Path) -> dict:
    t0 = time.perf_counter()
    with open(log_path, "w") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO)
        poller = TreeRSS(proc.pid)
        poller.start()
        stdout, _ = proc.communicate()
        wall = time.perf_counter() - t0
        poller.stop.set()
        poller.join()
    # ru_maxrss (KiB on Linux) is the max over every child waited for so far, so read it right
    # after each child: after the first ingest it is the first ingest's peak.
    maxrss_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    try:
        report = json.loads(stdout)
    except json.JSONDecodeError:
        report = None
    stderr = log_path.read_text(errors="replace")
    return {"wall_s": wall, "rc": proc.returncode, "report": report, "stdout": stdout, "stderr": stderr,
            "ru_maxrss_mb": maxrss_kib / 1024, "tree_rss_peak_mb": poller.peak / 2**20}


# -- the Dagster event log -------------------------------------------------------------------------
def dagster_breakdown(dagster_home: Path, skip_run_ids: set[str] = frozenset()) -> dict:
    from dagster import DagsterEventType, DagsterInstance

    instance = DagsterInstance.from_config(str(dagster_home))
    try:
        runs = []
        steps: dict[str, float] = {}
        for rec in sorted(instance.get_run_records(), key=lambda r: r.create_timestamp.timestamp()):
            run = rec.dagster_run
            if run.run_id in skip_run_ids:
                continue
            starts: dict[str, float] = {}
            run_steps: dict[str, float] = {}
            failed_steps = []
            run_start = run_end = None
            for e in instance.all_logs(run.run_id):
                ev = e.dagster_event
                if ev is None:
                    continue
                t = e.timestamp
                if ev.event_type == DagsterEventType.RUN_START:
                    run_start = t
                elif ev.event_type in (DagsterEventType.RUN_SUCCESS, DagsterEventType.RUN_FAILURE):
                    run_end = t
                elif ev.event_type == DagsterEventType.STEP_START:
                    starts[e.step_key] = t
                elif ev.event_type in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
                    if e.step_key in starts:
                        run_steps[e.step_key] = run_steps.get(e.step_key, 0.0) + t - starts.pop(e.step_key)
                    if ev.event_type == DagsterEventType.STEP_FAILURE:
                        failed_steps.append(e.step_key)
            tags = run.tags
            n_keys = None
            if run.job_name == "ingest_job":
                ordered = instance.get_dynamic_partitions("source_files")
                lo = tags.get("dagster/asset_partition_range_start")
                hi = tags.get("dagster/asset_partition_range_end")
                if lo in ordered and hi in ordered:
                    n_keys = ordered.index(hi) - ordered.index(lo) + 1
            run_s = (run_end - run_start) if run_start and run_end else None
            runs.append({"run_id": run.run_id, "job": run.job_name, "status": run.status.value, "files": n_keys,
                         "run_s": run_s, "steps_s": run_steps, "failed_steps": failed_steps})
            for k, v in run_steps.items():
                steps[k] = steps.get(k, 0.0) + v
        return {"runs": runs, "steps_s": steps}
    finally:
        instance.dispose()


def run_ids(dagster_home: Path) -> set[str]:
    from dagster import DagsterInstance

    instance = DagsterInstance.from_config(str(dagster_home))
    try:
        return {r.dagster_run.run_id for r in instance.get_run_records()}
    finally:
        instance.dispose()


# -- main ----------------------------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help=f"default {DEFAULT_CORPUS}")
    p.add_argument("--copies", type=int, help=f"copies of the corpus (default: enough for >= {TARGET_FILES} files)")
    p.add_argument("--include-media", action="store_true", help="also copy audio/video/subtitle files "
                   "(the pipeline skips them)")
    p.add_argument("--observe-loads", action="store_true",
                   help="start the CLI's entry point (mmrag.cli.main) through `python -c` with the "
                        "mmrag.models.embedders logger at INFO, so model-load log lines can be counted; "
                        "default runs .venv/bin/mmrag as is, which logs at WARNING only")
    p.add_argument("--bad", action="store_true", help="add the bad and pathological inputs of tests/corpus_gen.py "
                   "(once), and ingest them alone as well to measure their cost")
    p.add_argument("--keep", action="store_true", help="keep the temp dirs (corpus, MMRAG_HOME, logs)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = p.parse_args(argv)

    corpus = args.corpus.resolve()
    per_copy = len(source_files(corpus, args.include_media)) if corpus.is_dir() else 0
    if per_copy == 0:
        print(f"bench: no usable files under {corpus}", file=sys.stderr)
        return 2
    copies = args.copies or math.ceil(TARGET_FILES / per_copy)

    tmp = Path(tempfile.mkdtemp(prefix="mmrag-bench-"))
    root, home, logs = tmp / "corpus", tmp / "home", tmp / "logs"
    logs.mkdir(parents=True)
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if args.json else (lambda m: print(m, flush=True))
    try:
        n_files = build_corpus(corpus, root, copies, args.include_media)
        say(f"corpus: {copies} copies x {per_copy} files of {corpus} = {n_files} files under {root}")
        n_bad = 0
        if args.bad:
            n_bad = build_bad_inputs(root)
            n_files += n_bad
            say(f"  + {n_bad} bad and pathological inputs under {root / 'bad'} and {root / 'pathological'}")

        env = {k: v for k, v in os.environ.items() if not k.startswith("MMRAG_") and k != "DAGSTER_HOME"}
        env.update(MMRAG_HOME=str(home), MMRAG_CLIP_PRETRAINED="random", HF_HUB_OFFLINE="1",
                   TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
        venv_bin = Path(sys.executable).parent if (Path(sys.executable).parent / "mmrag").exists() \
            else REPO / ".venv" / "bin"
        ingest_args = ["ingest", str(root), "--source", "bench", "--json"]
        if args.observe_loads:
            code = ("import logging, sys; logging.getLogger('mmrag.models.embedders').setLevel(logging.INFO); "
                    "from mmrag.cli import main; sys.exit(main(sys.argv[1:]))")
            cmd = [str(venv_bin / "python"), "-c", code, *ingest_args]
        else:
            cmd = [str(venv_bin / "mmrag"), *ingest_args]
        say(f"running: MMRAG_HOME={home} MMRAG_CLIP_PRETRAINED=random HF_HUB_OFFLINE=1 {' '.join(cmd)}")

        bad_only = None
        if args.bad:  # their cost alone: a fresh data dir, the same command on just these folders
            bad_root, bad_home = tmp / "bad-only", tmp / "bad-home"
            build_bad_inputs(bad_root)
            bad_cmd = [*cmd[:cmd.index("ingest") + 1], str(bad_root), *cmd[cmd.index("ingest") + 2:]]
            bad_only = run_ingest(bad_cmd, {**env, "MMRAG_HOME": str(bad_home)}, logs / "bad-only.stderr")
            say(f"bad inputs alone: {bad_only['wall_s']:.1f} s, rc {bad_only['rc']}")
        first = run_ingest(cmd, env, logs / "first.stderr")
        say(f"first ingest: {first['wall_s']:.1f} s, rc {first['rc']}")
        dagster_home = home / "dagster"
        first_runs = run_ids(dagster_home)
        second = run_ingest(cmd, env, logs / "second.stderr")
        say(f"no-change re-ingest: {second['wall_s']:.1f} s, rc {second['rc']}")
        breakdown = dagster_breakdown(dagster_home)
        first_bd = [r for r in breakdown["runs"] if r["run_id"] in first_runs]
        second_bd = [r for r in breakdown["runs"] if r["run_id"] not in first_runs]

        steps: dict[str, float] = {}
        for r in first_bd:
            for k, v in r["steps_s"].items():
                steps[k] = steps.get(k, 0.0) + v
        wall = first["wall_s"]
        model_s = sum(steps.get(s, 0.0) for s in MODEL_STEPS)
        index_s = sum(steps.get(s, 0.0) for s in INDEX_STEPS)
        raw_s = sum(steps.get(s, 0.0) for s in RAW_STEPS)
        other_steps_s = sum(v for k, v in steps.items() if k not in MODEL_STEPS + INDEX_STEPS + RAW_STEPS)
        in_runs_s = sum(r["run_s"] or 0.0 for r in first_bd)
        rest_s = wall - model_s - index_s - raw_s - other_steps_s
        rep = first["report"] or {}
        indexed = rep.get("indexed")

        def loads(stderr: str) -> dict:
            return {name: stderr.count(marker) for name, marker in LOAD_MARKERS.items()}

        first_loads = loads(first["stderr"])
        observable = args.observe_loads or any(first_loads.values())

        fig = {
            "corpus": str(corpus), "copies": copies, "files": n_files,
            "clip_weights": "random (MMRAG_CLIP_PRETRAINED=random)",
            "command": " ".join(cmd),
            "first": {
                "wall_s": wall, "rc": first["rc"], "files_per_s": n_files / wall,
                "indexed_files_per_s": (indexed / wall) if indexed else None,
                "indexed": indexed, "skipped": len(rep.get("skipped", [])), "failed": len(rep.get("failed", [])),
                "text_rows": rep.get("text_rows"), "image_rows": rep.get("image_rows"),
                "graph_nodes": rep.get("graph_nodes"), "graph_edges": rep.get("graph_edges"),
                "peak_rss_mb_ru_maxrss": first["ru_maxrss_mb"], "peak_rss_mb_tree": first["tree_rss_peak_mb"],
                "dagster_runs": len(first_bd), "in_runs_s": in_runs_s,
                "breakdown_s": {"model_compute": model_s, "index_writes": index_s, "raw_files": raw_s,
                                "other_steps": other_steps_s, "rest": rest_s,
                                "rest_in_runs": in_runs_s - model_s - index_s - raw_s - other_steps_s,
                                "rest_outside_runs": wall - in_runs_s},
                "steps_s": steps,
                "runs": first_bd,
                "model_loads_logged": first_loads if observable else None,
            },
            "second": {"wall_s": second["wall_s"], "rc": second["rc"], "dagster_runs": len(second_bd),
                       "peak_rss_mb_tree": second["tree_rss_peak_mb"],
                       "summary": next((ln for ln in second["stderr"].splitlines() if " files — " in ln), None)},
            "reingest_ratio": second["wall_s"] / wall,
        }
        if bad_only is not None:
            brep = bad_only["report"] or {}
            fig["bad"] = {"files": n_bad, "alone_wall_s": bad_only["wall_s"], "rc": bad_only["rc"],
                          "indexed": brep.get("indexed"), "skipped": brep.get("skipped", []),
                          "failed": brep.get("failed", [])}
        fig["aims"] = {
            "no_change_reingest_ratio_le_0.05": fig["reingest_ratio"] <= 0.05,
            "peak_rss_le_3GB": max(first["ru_maxrss_mb"], first["tree_rss_peak_mb"]) <= 3 * 1024,
            "model_loaded_once_per_process": (all(v == 1 for v in first_loads.values())
                                              if observable else None),
        }
        if args.keep:
            fig["kept"] = str(tmp)
        if args.json:
            print(json.dumps(fig, indent=2, default=str))
        else:
            print_table(fig, observable)
        if first["rc"] not in (0, 1) or first["report"] is None:
            say(f"first ingest failed (rc {first['rc']}); stderr tail:\n{first['stderr'][-3000:]}")
            return 1
        return 0
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def build_bad_inputs(root: Path) -> int:
    """The bad corpus and the pathological inputs (tests/corpus_gen.py) under root/bad and
    root/pathological; returns how many files that is."""
    sys.path.insert(0, str(REPO / "tests"))
    from corpus_gen import build_bad, build_pathological

    build_bad(root / "bad")
    build_pathological(root / "pathological")
    return sum(1 for d in ("bad", "pathological") for p in (root / d).iterdir() if p.is_file())


def print_table(fig: dict, observable: bool) -> None:
    f, s = fig["first"], fig["second"]
    wall = f["wall_s"]
    b = f["breakdown_s"]
    print()
    print(f"mmrag ingest benchmark — {fig['files']} files ({fig['copies']} copies of {fig['corpus']}); "
          f"CLIP had RANDOM weights (MMRAG_CLIP_PRETRAINED=random); HF_HUB_OFFLINE=1")
    print(f"first ingest: {f['indexed']} indexed, {f['skipped']} skipped, {f['failed']} failed; "
          f"{f['text_rows']} text rows, {f['image_rows']} image rows, graph {f['graph_nodes']}/{f['graph_edges']}; "
          f"{f['dagster_runs']} Dagster run(s)")
    rows = [
        ("first ingest wall time", f"{wall:8.1f} s", "100.0 %"),
        ("  model compute (parsed_blocks+modal_descriptions+embeddings)", f"{b['model_compute']:8.1f} s",
         f"{100 * b['model_compute'] / wall:5.1f} %"),
        ("  index writes (milvus_partitions+lightrag_graph)", f"{b['index_writes']:8.1f} s",
         f"{100 * b['index_writes'] / wall:5.1f} %"),
        ("  raw_files", f"{b['raw_files']:8.1f} s", f"{100 * b['raw_files'] / wall:5.1f} %"),
    ]
    if b["other_steps"]:
        rows.append(("  other steps", f"{b['other_steps']:8.1f} s", f"{100 * b['other_steps'] / wall:5.1f} %"))
    rows += [
        ("  rest (process start, imports, orchestration, run setup)", f"{b['rest']:8.1f} s",
         f"{100 * b['rest'] / wall:5.1f} %"),
        ("    of which inside Dagster runs, between steps", f"{b['rest_in_runs']:8.1f} s",
         f"{100 * b['rest_in_runs'] / wall:5.1f} %"),
        ("    of which outside runs (start, imports, scan, report)", f"{b['rest_outside_runs']:8.1f} s",
         f"{100 * b['rest_outside_runs'] / wall:5.1f} %"),
        ("per step:", "", ""),
        *[(f"  {k}", f"{v:8.1f} s", f"{100 * v / wall:5.1f} %") for k, v in f["steps_s"].items()],
        ("throughput (all files / indexed files)",
         f"{f['files_per_s']:.2f}/s", f"{f['indexed_files_per_s'] or 0:.2f}/s"),
        ("peak RSS of the child (ru_maxrss / polled process tree)",
         f"{f['peak_rss_mb_ru_maxrss']:.0f} MB", f"{f['peak_rss_mb_tree']:.0f} MB"),
        ("no-change re-ingest wall time", f"{s['wall_s']:8.1f} s", f"{100 * fig['reingest_ratio']:5.1f} %"),
    ]
    if fig.get("bad"):
        bad = fig["bad"]
        rows.append((f"the {bad['files']} bad inputs ingested alone (fresh data dir, models loaded)",
                     f"{bad['alone_wall_s']:8.1f} s", f"{100 * bad['alone_wall_s'] / wall:5.1f} %"))
    w = max(len(r[0]) for r in rows)
    for name, a, c in rows:
        print(f"{name:<{w}}  {a:>12}  {c:>9}")
    if s["summary"]:
        print(f"re-ingest said: {s['summary'].strip()}; it made {s['dagster_runs']} Dagster run(s)")
    for r in f["runs"]:
        print(f"run {r['run_id'][:8]} {r['job']} {r['status']}: {r['files']} files, "
              f"{(r['run_s'] or 0):.1f} s" + (f", failed steps {r['failed_steps']}" if r["failed_steps"] else ""))
    print()
    aims = fig["aims"]
    print(f"no-change re-ingest ratio <= 0.05: {'PASS' if aims['no_change_reingest_ratio_le_0.05'] else 'FAIL'} "
          f"({fig['reingest_ratio']:.3f})")
    if fig.get("bad"):
        bad = fig["bad"]
        print(f"bad inputs alone: {bad['indexed']} indexed, {len(bad['skipped'])} skipped, {len(bad['failed'])} failed:")
        for x in bad["failed"]:
            print(f"  failed  {x['path']}: {x['error'][:110]}")
        for x in bad["skipped"]:
            print(f"  skipped {x['path']}: {x['reason'][:110]}")
    peak = max(f["peak_rss_mb_ru_maxrss"], f["peak_rss_mb_tree"])
    print(f"peak RSS <= 3 GB: {'PASS' if aims['peak_rss_le_3GB'] else 'FAIL'} ({peak:.0f} MB)")
    if observable:
        counts = ", ".join(f"{k} {v}x" for k, v in f["model_loads_logged"].items())
        ok = aims["model_loaded_once_per_process"]
        print(f"each model loaded once per process: {'PASS' if ok else 'FAIL'} "
              f"(load log lines in the first ingest's stderr, one process, {f['dagster_runs']} run(s): {counts})")
    else:
        print("each model loaded once per process: NOT OBSERVED — `mmrag ingest` logs at WARNING and the "
              "model loads are logged at INFO, so the child's stderr shows no load lines; "
              "rerun with --observe-loads to count them")


if __name__ == "__main__":
    sys.exit(main())
