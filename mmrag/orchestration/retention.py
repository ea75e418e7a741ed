"""Keeping the Dagster instance bounded: old runs go once nothing of theirs is the latest.

A run is purged when it finished more than `older_than_s` ago and none of its materializations is
the latest of its asset partition (a partition of a deleted file no longer counts): the UI keeps,
for every file, its latest materialization of every stage (and their asset checks and the run that
made them), and forgets superseded history. Its event log and its captured stdout/stderr go with it.
Tick retention is in dagster.yaml (`retention`).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

from mmrag.orchestration.planner import PARTITIONS


def _runs_holding_latest(instance) -> set[str]:
    """The runs that made the latest materialization of some current asset partition (or of an
    unpartitioned asset). Storage ids are the asset index's (SQLite keeps a run's own events in a
    shard with ids of its own), so runs are found through the records of those ids."""
    from dagster import AssetRecordsFilter, DagsterEventType

    current = set(instance.get_dynamic_partitions(PARTITIONS))
    keep: set[str] = set()
    for key in instance.all_asset_keys():
        by_partition = instance.get_latest_storage_id_by_partition(key, DagsterEventType.ASSET_MATERIALIZATION)
        if not by_partition:  # unpartitioned (the evaluation, the audit): its latest
            keep |= {r.run_id for r in instance.fetch_materializations(AssetRecordsFilter(asset_key=key), limit=1).records}
            continue
        ids = sorted({sid for p, sid in by_partition.items() if p in current})
        for i in range(0, len(ids), 1000):
            part = ids[i:i + 1000]
            recs = instance.fetch_materializations(AssetRecordsFilter(asset_key=key, storage_ids=part),
                                                   limit=len(part)).records
            keep |= {r.run_id for r in recs}
    return keep


def purge_runs(instance, older_than_s: float, *, now: float | None = None, dry_run: bool = False,
               limit: int = 10_000) -> dict:
    """Delete finished runs older than `older_than_s` whose materializations are all superseded.
    Returns {"purged": n, "kept_latest": n, "examined": n}."""
    from dagster import DagsterRunStatus, RunsFilter

    now = time.time() if now is None else now
    before = datetime.fromtimestamp(now - older_than_s, tz=timezone.utc)
    done = [DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED]
    runs = instance.get_runs(RunsFilter(statuses=done, updated_before=before), limit=limit)
    if not runs:
        return {"purged": 0, "kept_latest": 0, "examined": 0, "dry_run": dry_run}
    keep = _runs_holding_latest(instance)
    purged = kept = 0
    for run in runs:
        if run.run_id in keep:
            kept += 1
            continue
        purged += 1
        if not dry_run:
            instance.delete_run(run.run_id)
            try:
                instance.compute_log_manager.delete_logs(prefix=[run.run_id])
            except Exception:  # noqa: BLE001 - a compute log manager without deletion keeps its files
                pass
    return {"purged": purged, "kept_latest": kept, "examined": len(runs), "dry_run": dry_run}
