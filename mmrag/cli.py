"""`mmrag`: ingest a folder through the Dagster assets, query the index, show its status.

Runs go through a real Dagster instance (DAGSTER_HOME, default $MMRAG_HOME/dagster with the
repository's dagster.yaml), so `mmrag dev` / `dagster dev` shows every run the CLI made.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from mmrag.config import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
EXIT_FAILED_FILES, EXIT_BAD_ROOT, EXIT_BUSY = 1, 2, 3


def ensure_dagster_home(settings: Settings) -> Path:
    """Point DAGSTER_HOME at $MMRAG_HOME/dagster (unless set) and give it the project's dagster.yaml."""
    if os.environ.get("DAGSTER_HOME"):
        return Path(os.environ["DAGSTER_HOME"])
    home = (settings.home / "dagster").resolve()
    home.mkdir(parents=True, exist_ok=True)
    template = REPO_ROOT / "dagster.yaml"
    if template.exists() and not (home / "dagster.yaml").exists():
        shutil.copy(template, home / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def _instance(settings: Settings):
    from dagster import DagsterInstance

    ensure_dagster_home(settings)
    return DagsterInstance.get()


def _source_name(root: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", root.name) or "root"


def _quiet_run_config() -> dict:
    return {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def _say(args, msg: str) -> None:
    # With --json, stdout carries only the JSON object; progress goes to stderr.
    print(msg, file=sys.stderr if args.json else sys.stdout, flush=True)


def cmd_ingest(args) -> int:
    from mmrag.sync import contiguous_ranges, plan_sync, range_tags, scan_root

    settings = Settings.from_env()
    root = Path(args.root).expanduser().resolve()
    source = args.source or _source_name(root)
    scan = scan_root(root, source)
    if scan.error:
        print(f"mmrag: {scan.error}; nothing was changed", file=sys.stderr)
        return EXIT_BAD_ROOT
    instance = _instance(settings)

    from mmrag.definitions import defs
    from mmrag.state import Manifest

    manifest = Manifest(settings.state_path)
    manifest.set_source(source, str(root))
    records = {r.file_key: r for r in manifest.all(source)}
    partitions = set(instance.get_dynamic_partitions("source_files"))
    plan = plan_sync(scan, records, partitions, fingerprint=settings.fingerprint())
    for key, (size, mtime) in plan.touched.items():
        manifest.update(key, size=size, mtime=mtime)
    _say(args, f"{source}: {len(scan.files)} files — {len(plan.new)} new, {len(plan.changed)} changed, "
               f"{len(plan.stale)} stale, {len(plan.deleted)} deleted, {len(plan.unchanged)} unchanged")
    run_errors: list[tuple[list[str], str]] = []
    if plan.deleted:
        job = defs.resolve_job_def("cleanup_job")
        res = job.execute_in_process(
            instance=instance, raise_on_error=False, tags={"mmrag/launched-by": "cli"},
            run_config={**_quiet_run_config(),
                        "ops": {"remove_deleted_files": {"config": {"file_keys": plan.deleted}}}})
        if res.success:
            for key in plan.deleted:
                if key in partitions:
                    instance.delete_dynamic_partition("source_files", key)
        else:
            run_errors.append((plan.deleted, _run_error(res)))
    if plan.new:
        instance.add_dynamic_partitions("source_files", plan.new)
    ordered = instance.get_dynamic_partitions("source_files")
    job = defs.resolve_job_def("ingest_job")
    for start, end in contiguous_ranges(plan.to_run, ordered):
        keys = ordered[ordered.index(start): ordered.index(end) + 1]
        _say(args, f"  indexing {len(keys)} files ({start} … {end})")
        res = job.execute_in_process(instance=instance, raise_on_error=False, run_config=_quiet_run_config(),
                                     tags={**range_tags(start, end), "mmrag/launched-by": "cli"})
        if not res.success:
            run_errors.append((keys, _run_error(res)))
    return _report(args, settings, source, scan, run_errors)


def _run_error(result) -> str:
    for ev in result.all_events:
        if ev.is_failure and ev.event_specific_data is not None and getattr(ev.event_specific_data, "error", None):
            err = ev.event_specific_data.error
            return f"{err.cls_name}: {err.message.strip()}"
    return "the run failed"


def _index_counts(settings: Settings) -> dict:
    from mmrag.milvus_store import IMAGE, TEXT, MilvusStore

    store = MilvusStore(settings.resolved_milvus_uri, settings.milvus_token, settings.milvus_db,
                        settings.collection_prefix)
    from mmrag.lightrag_runtime import graph_counts

    nodes, edges = graph_counts(settings.graph_dir)
    return {"text_rows": store.count(TEXT), "image_rows": store.count(IMAGE), "graph_nodes": nodes, "graph_edges": edges}


def _report(args, settings, source, scan, run_errors) -> int:
    from mmrag.state import Manifest

    manifest = Manifest(settings.state_path)
    recs = {r.file_key: r for r in manifest.all(source)}
    failed_by_run = {k: err for keys, err in run_errors for k in keys}
    indexed, skipped, failed = 0, [], []
    for key, (rel, _, _) in sorted(scan.files.items()):
        rec = recs.get(key)
        if key in failed_by_run:
            failed.append({"path": rel, "error": failed_by_run[key]})
        elif rec is None:
            failed.append({"path": rel, "error": "not indexed (no record)"})
        elif rec.status in ("indexed", "partial"):  # partial: indexed, some descriptions extractive
            indexed += 1
        elif rec.status == "skipped":
            skipped.append({"path": rel, "reason": rec.reason})
        else:
            failed.append({"path": rel, "error": rec.reason or rec.status})
    for rel, reason in scan.ignored:
        skipped.append({"path": rel, "reason": reason})
    out = {"files": len(scan.files) + len(scan.ignored), "indexed": indexed, "skipped": skipped, "failed": failed,
           **_index_counts(settings)}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"indexed {indexed}/{out['files']} files; {len(skipped)} skipped, {len(failed)} failed")
        for s in skipped:
            print(f"  skipped {s['path']}: {s['reason']}")
        for f in failed:
            print(f"  FAILED  {f['path']}: {f['error']}")
        print(f"index: {out['text_rows']} text rows, {out['image_rows']} image rows, "
              f"graph {out['graph_nodes']} nodes / {out['graph_edges']} edges")
    return EXIT_FAILED_FILES if failed else 0


def cmd_query(args) -> int:
    from mmrag.query import search

    settings = Settings.from_env()
    hits = search(settings, args.text, top_k=args.top_k, source=args.source)
    if args.json:
        print(json.dumps({"hits": hits}, indent=2, default=str))
        return 0
    if not hits:
        print("no hits")
    for i, h in enumerate(hits, 1):
        where = f"p.{h['page'] + 1}" if h.get("page") is not None and h["page"] >= 0 else ""
        if "t_start" in h:
            from mmrag.media import hms

            where = f"{hms(h['t_start'])}–{hms(h['t_end'])}"
        text = " ".join(h["text"].split())[:160]
        print(f"{i:2d}. [{h['score']:.3f}] {h['source']}:{h['file']} {where} ({h['modality']})\n    {text}")
    return 0


def cmd_status(args) -> int:
    from mmrag.state import Manifest
    from mmrag.sync import plan_sync, scan_root

    settings = Settings.from_env()
    manifest = Manifest(settings.state_path)
    fp = settings.fingerprint()
    sources = {}
    for name, root in manifest.sources().items():
        recs = manifest.all(name)
        scan = scan_root(root, name)
        plan = plan_sync(scan, {r.file_key: r for r in recs}, {r.file_key for r in recs}, fingerprint=fp)
        sources[name] = {
            "root": root, "root_error": scan.error,
            "files": [{"path": r.rel_path, "status": r.status, "reason": r.reason, "text_rows": r.text_rows,
                       "image_rows": r.image_rows, "parser": r.parser} for r in recs],
            "text_rows": sum(r.text_rows for r in recs), "image_rows": sum(r.image_rows for r in recs),
            "stale": sorted(k.partition(":")[2] for k in plan.changed + plan.stale + plan.new),
            "deleted": sorted(k.partition(":")[2] for k in plan.deleted),
        }
    if args.json:
        print(json.dumps({"fingerprint": fp, "sources": sources}, indent=2))
        return 0
    if not sources:
        print("nothing indexed yet: mmrag ingest ROOT")
    for name, s in sources.items():
        print(f"{name} ({s['root']}): {len(s['files'])} files, {s['text_rows']} text rows, {s['image_rows']} image rows")
        for f in s["files"]:
            print(f"  {f['status']:8s} {f['text_rows']:5d} {f['image_rows']:3d}  {f['path']}"
                  + (f"  — {f['reason'][:100]}" if f["reason"] and f["status"] != "indexed" else ""))
        if s["stale"] or s["deleted"]:
            print(f"  stale: {', '.join(s['stale']) or '-'}; deleted: {', '.join(s['deleted']) or '-'}")
    return 0


def cmd_dev(args) -> int:
    """`dagster dev` on this project with the CLI's DAGSTER_HOME, so its runs show up."""
    settings = Settings.from_env()
    ensure_dagster_home(settings)
    local = Path(sys.executable).parent / "dagster"  # the venv's, even when the venv is not on PATH
    cmd = [str(local) if local.exists() else "dagster", "dev", "-w", str(REPO_ROOT / "workspace.yaml"),
           "-p", str(args.port)]
    return subprocess.call(cmd, cwd=REPO_ROOT)


def _limit_malloc_arenas(n: int = 2) -> None:
    """glibc gives each thread pool its own malloc arena; torch, gRPC (Milvus Lite) and LightRAG's
    threads then hold hundreds of MB of freed memory. Two arenas keep peak RSS lower (Linux only)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-8, n)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    _limit_malloc_arenas()
    p = argparse.ArgumentParser(prog="mmrag", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pi = sub.add_parser("ingest", help="sync a folder into the index (add new, re-index stale, delete gone)")
    pi.add_argument("root")
    pi.add_argument("--source", help="source name (default: the folder's name)")
    pi.add_argument("--json", action="store_true")
    pq = sub.add_parser("query", help="top-k hits from the index")
    pq.add_argument("text")
    pq.add_argument("--top-k", type=int, default=5)
    pq.add_argument("--source")
    pq.add_argument("--json", action="store_true")
    ps = sub.add_parser("status", help="rows per source and file; stale files")
    ps.add_argument("--json", action="store_true")
    pd = sub.add_parser("dev", help="open the Dagster UI on this project")
    pd.add_argument("--port", type=int, default=3000)
    args = p.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("lightrag", "nano-vectordb", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from mmrag.milvus_store import IndexBusyError

    try:
        return {"ingest": cmd_ingest, "query": cmd_query, "status": cmd_status, "dev": cmd_dev}[args.cmd](args)
    except IndexBusyError as e:
        print(f"mmrag: {e}", file=sys.stderr)
        return EXIT_BUSY


if __name__ == "__main__":
    sys.exit(main())
