"""`mmrag ingest`: bring the index in line with a folder through Dagster runs, then report."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from pathlib import Path

from mmrag.cli.common import EXIT_BAD_ROOT, EXIT_FAILED_FILES, progress, source_name
from mmrag.config import Settings
from mmrag.orchestration.instance import dagster_instance


def _quiet_run_config() -> dict:
    return {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def sync_folder(settings: Settings, root: Path, source: str, say=lambda msg: None, retry_failed: bool = False,
                bar: bool = False):
    """Bring the index in line with `root`: clean-up run for deleted files, ingest runs (ranges of
    partitions) for new, changed and stale ones (`mmrag.orchestration.planner`). Returns (scan, run
    errors, files removed); the scan's `error` is set (and nothing changed) when the root is missing
    or unreadable.

    First, runs of this instance whose process died are marked failed and their pool slots freed;
    each run then starts once the index pool has a free slot (bounded wait, `MMRAG_SLOT_WAIT_S`).
    `bar`: a progress bar on the terminal (`mmrag.cli.bar`) instead of a line per batch."""
    from mmrag.manifest import Manifest
    from mmrag.orchestration.planner import survey
    from mmrag.sources.sync import scan_root

    scan = scan_root(root, source)
    if scan.error:
        return scan, [], 0
    settings = hold_index(settings, say)
    instance = dagster_instance(settings)
    manifest = Manifest(settings.state_path)
    manifest.set_source(source, str(root))
    found = survey(instance, manifest, [scan], fingerprint=settings.fingerprint(), retry_failed=retry_failed, log=say)
    _, plan = found.plans[0]
    if plan.to_run:
        _start_parse_worker(settings, [scan.files[k][0] for k in plan.to_run])
    try:
        return (scan, *_run_plan(settings, instance, scan, plan, found.partitions, say, bar))
    finally:
        from mmrag.parsing.worker import discard_spare

        discard_spare()


def hold_index(settings: Settings, say) -> Settings:
    """On Milvus Lite, take the data dir for this process before planning and before any run asks for
    a pool slot (`mmrag.index.lite_lock`: a second ingest waits its turn, then plans on what the first
    one indexed). When `mmrag up` announces its Milvus server for the data dir meanwhile, the settings
    that use it (no wait: the server takes every process)."""
    if not settings.is_milvus_lite:
        return settings
    from mmrag.index import lite_lock

    if lite_lock.hold(settings.resolved_milvus_uri, settings.slot_wait_s, say,
                      give_up=lambda: not Settings.from_env().is_milvus_lite):
        return settings
    say("a Milvus server was announced for this data dir (`mmrag up`): using it")
    return Settings.from_env()


def _start_parse_worker(settings: Settings, rel_paths: list[str]) -> None:
    """Start the run's parse worker now, loading the parsers these files need while the definitions
    import and Dagster sets the run up (50 office files: some 6 s of CPU that the parse step waited
    for). The parse step adopts it; a failure here only means the step starts its own."""
    from mmrag.parsing.worker import WorkerConfig, start_spare
    from mmrag.sources.blobs import BlobStore
    from mmrag.sources.filetypes import kind_by_name

    try:
        from mmrag.parsing.service import find_service

        config = WorkerConfig.from_settings(settings, BlobStore(settings.blobs_dir).root)
        if find_service(config, settings.home, settings.parse_service):
            return  # the warm parse service of `mmrag up` parses them
        kinds = sorted({kind_by_name(rel) for rel in rel_paths} - {"unknown"})
        start_spare(config, kinds)
    except Exception as e:  # noqa: BLE001
        logging.getLogger(__name__).debug("no parse worker ahead of the run: %s", e)


def _run_plan(settings: Settings, instance, scan, plan, partitions: set[str], say, bar: bool = False) -> tuple[list, int]:
    """sync_folder's runs, executed here one after the other: the clean-up, then the ingest ranges.
    Returns (run errors as (keys, error), files removed)."""
    from mmrag.definitions import defs
    from mmrag.orchestration.planner import (
        PARTITIONS,
        PlannedRun,
        cleanup_run,
        ingest_runs,
    )
    from mmrag.orchestration.runs import owner_tags, wait_for_pool

    say(f"{scan.source}: {len(scan.files)} files — {len(plan.new)} new, {len(plan.changed)} changed, "
        f"{len(plan.stale)} stale, {len(plan.deleted)} deleted, {len(plan.unchanged)} unchanged")
    run_errors: list[tuple[list[str], str]] = []
    ingest_bar = None  # the terminal's bar, while ingest runs execute

    def execute(run: PlannedRun, what: str) -> bool:
        """Wait for the index pool, then run it in this process; whether it succeeded."""
        try:
            wait_for_pool(instance, "mmrag_index", settings.slot_wait_s, say)
        except TimeoutError as e:
            say(f"  {what}: {e}")
            run_errors.append((run.keys, f"TimeoutError: {e}"))
            return False
        from dagster._core.utils import make_new_run_id

        run_id = make_new_run_id()
        with ingest_bar.run(instance, run_id, run.keys) if ingest_bar else contextlib.nullcontext():
            res = defs.resolve_job_def(run.job).execute_in_process(
                instance=instance, raise_on_error=False, run_config={**_quiet_run_config(), **run.run_config},
                tags={**run.tags, "mmrag/launched-by": "cli", **owner_tags()}, run_id=run_id)
        if not res.success:
            run_errors.append((run.keys, _run_error(res)))
        return res.success

    removed = 0
    if plan.deleted and execute(cleanup_run(plan.deleted, lite=settings.is_milvus_lite), "clean-up"):
        removed = len(plan.deleted)
        for key in plan.deleted:
            if key in partitions:
                instance.delete_dynamic_partition(PARTITIONS, key)
    if plan.new:
        instance.add_dynamic_partitions(PARTITIONS, plan.new)
    ordered = instance.get_dynamic_partitions(PARTITIONS)
    if bar and plan.to_run:
        from mmrag.cli.bar import IngestBar

        ingest_bar = IngestBar(len(plan.to_run), settings.state_path)
    try:
        for run in ingest_runs(plan.to_run, ordered, lite=settings.is_milvus_lite):
            if ingest_bar is None:
                say(f"  indexing {len(run.keys)} files ({run.keys[0]} … {run.keys[-1]})")
            execute(run, "indexing")
    finally:
        if ingest_bar is not None:
            ingest_bar.close()
    return run_errors, removed


def cmd_ingest(args) -> int:
    settings = Settings.from_env()
    root = Path(args.root).expanduser().resolve()
    source = args.source or source_name(root)
    from mmrag.cli.bar import wanted

    if root.is_dir():  # the report reads the same index; a bad root fails at once
        settings = hold_index(settings, lambda msg: progress(args, msg))
    scan, run_errors, removed = sync_folder(settings, root, source, lambda msg: progress(args, msg),
                                            retry_failed=args.retry_failed, bar=wanted(args.json))
    if scan.error:
        print(f"mmrag: {scan.error}; nothing was changed", file=sys.stderr)
        return EXIT_BAD_ROOT
    return _report(args, settings, source, scan, run_errors, removed)


def _run_error(result) -> str:
    for ev in result.all_events:
        if ev.is_failure and ev.event_specific_data is not None and getattr(ev.event_specific_data, "error", None):
            err = ev.event_specific_data.error
            return f"{err.cls_name}: {err.message.strip()}"
    return "the run failed"


def _index_counts(settings: Settings) -> dict:
    from mmrag.index.milvus_store import IMAGE, TEXT
    from mmrag.models import factory

    store = factory.milvus_store(settings)
    from mmrag.graph.lightrag_adapter import graph_counts

    nodes, edges = graph_counts(settings.graph_dir)
    return {"text_rows": store.count(TEXT), "image_rows": store.count(IMAGE), "graph_nodes": nodes, "graph_edges": edges}


def _report(args, settings, source, scan, run_errors, removed: int = 0) -> int:
    from mmrag.manifest import IN_INDEX, Manifest, Status

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
        elif rec.status in IN_INDEX:  # partial: indexed, some descriptions extractive
            indexed += 1
        elif rec.status == Status.SKIPPED:
            skipped.append({"path": rel, "reason": rec.reason})
        else:
            failed.append({"path": rel, "error": rec.reason or rec.status})
    for rel, reason in scan.ignored:
        skipped.append({"path": rel, "reason": reason})
    out = {"files": len(scan.files) + len(scan.ignored), "indexed": indexed, "skipped": skipped, "failed": failed,
           "deleted": removed, **_index_counts(settings)}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"indexed {indexed}/{out['files']} files; {len(skipped)} skipped, {len(failed)} failed"
              + (f"; {removed} deleted files removed from the index" if removed else ""))
        for s in skipped:
            print(f"  skipped {s['path']}: {s['reason']}")
        for f in failed:
            print(f"  FAILED  {f['path']}: {f['error']}")
        print(f"index: {out['text_rows']} text rows, {out['image_rows']} image rows, "
              f"graph {out['graph_nodes']} nodes / {out['graph_edges']} edges")
    return EXIT_FAILED_FILES if failed else 0

