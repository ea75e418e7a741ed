"""Repairing what the index audit found: orphans are deleted, files whose parts disagree are
requested again (marked `pending`, which the sensor, the schedule and `mmrag ingest` all redo from
the start), deleted files' entries go through the clean-up job, unreferenced blobs through GC.

A repair never runs beside an index run: orphans are told apart from a run's fresh rows only when no
run is writing. It refuses (and says which runs) while one is in flight.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from mmrag.audit.index_audit import CLEANUP, GC, REINDEX, AuditReport
from mmrag.config import Settings
from mmrag.index.milvus_store import COLLECTIONS
from mmrag.manifest import Status

INDEX_JOBS = ("ingest_job", "cleanup_job")


class RepairRefused(RuntimeError):
    pass


def runs_in_flight(instance) -> list[str]:
    """Index runs that are queued or running (runs whose process died are reaped first)."""
    from dagster import DagsterRunStatus, RunsFilter

    from mmrag.orchestration.runs import reap_dead_runs

    reap_dead_runs(instance)
    busy = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING,
            DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]
    runs = instance.get_runs(RunsFilter(statuses=busy))
    return [f"{r.job_name} {r.run_id[:8]}" for r in runs if r.job_name in INDEX_JOBS]


def repair(settings: Settings, report: AuditReport, instance, *, sync: Callable[[str, Path], None] | None = None,
           grace_s: float = 3600.0) -> dict:
    """Fix what `report` found. `sync(source, root)`: bring a source in line now (the CLI runs
    `mmrag ingest`'s sync); without it the files are only requested, for the sensor to index.
    Returns what was done."""
    from mmrag.models import factory

    if busy := runs_in_flight(instance):
        raise RepairRefused(f"{len(busy)} index runs are in flight ({', '.join(busy[:3])}): "
                            "repair when they have finished")
    done = {"milvus_rows_deleted": 0, "graph_items_deleted": 0, "stage_outputs_deleted": 0,
            "graph_refs_dropped": 0, "files_requested": 0, "sources_synced": [], "blobs_removed": 0}
    orphans = report.orphans
    if rows := orphans.get("milvus"):
        store = factory.milvus_store(settings)
        for modality in COLLECTIONS:
            done["milvus_rows_deleted"] += store.delete_ids(modality, sorted(set(rows.get(modality, ()))))
        store.flush()
    if graph := orphans.get("graph"):
        manifest = factory.manifest(settings)
        llm = factory.llm_client(settings)
        gs = factory.graph_store(settings, text_embedder=factory.text_embedder(settings, llm=llm), llm=llm,
                                 manifest=manifest)
        res = gs.remove_orphans(graph["entities"], graph["relations"], graph["chunks"])
        done["graph_items_deleted"] = sum(res.values())
    for path in orphans.get("stages", ()):
        if os.path.exists(path):
            os.unlink(path)
            done["stage_outputs_deleted"] += 1
    manifest = factory.manifest(settings)
    if keys := orphans.get("refs"):
        manifest.drop_graph_refs(keys)
        done["graph_refs_dropped"] = len(keys)
    for key in report.reindex_keys():
        rec = manifest.get(key)
        if rec is not None:
            manifest.update(key, status=Status.PENDING, retry_at=None)
            done["files_requested"] += 1
    if sync is not None:
        roots = manifest.sources()
        touched = {d.key.partition(":")[0] for d in report.differences if d.fix in (REINDEX, CLEANUP)}
        for source in sorted(touched & set(roots)):
            sync(source, Path(roots[source]))
            done["sources_synced"].append(source)
    if any(d.fix == GC for d in report.differences):
        from mmrag.index.gc import collect_garbage

        done["blobs_removed"] = collect_garbage(settings, grace_s)["removed"]
    return done
