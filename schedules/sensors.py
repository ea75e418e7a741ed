"""watch_folders: new, changed and deleted files → partition adds/deletes and batched run requests.

Each tick reads the partitions and the manifest once and diffs sets; it stats every file and hashes
only those whose size or mtime changed. New and changed files go into runs of contiguous partition
ranges (many files per run); deleted files get one clean-up run; transient failures whose backoff
has passed are requested again. The cursor remembers what was requested and not yet finished, so a
slow run is not requested twice. Each tick first marks runs whose process died as failed and frees
their pool slots (`mmrag.runs`), so their files are requested again.
"""


import hashlib
import json
import time

from dagster import (
    AddDynamicPartitionsRequest,
    DeleteDynamicPartitionsRequest,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from mmrag.runs import reap_dead_runs
from mmrag.state import DONE
from mmrag.sync import contiguous_ranges, plan_sync, range_tags, scan_root
from mmrag_assets.cleanup import cleanup_job
from mmrag_assets.jobs import LITE_WRITER_TAG, ingest_job
from mmrag_assets.partitions import source_files
from mmrag_resources.data_dir import DataDirResource
from mmrag_resources.milvus import MilvusResource
from schedules.watch import sensor_interval_s, sensor_status, watched_roots


REQUEST_TTL_S = 6 * 3600


def _run_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


@sensor(name="watch_folders", jobs=[ingest_job, cleanup_job], minimum_interval_seconds=sensor_interval_s(),
        default_status=sensor_status(), description="Ingest new and changed files of the watched folders; clean up deleted ones.")
def watch_folders(context: SensorEvaluationContext, data_dir: DataDirResource, milvus: MilvusResource):
    manifest = data_dir.manifest()
    roots = watched_roots(manifest)
    if not roots:
        return SkipReason("no folder is watched: run `mmrag ingest ROOT` once or set MMRAG_WATCH")
    cursor = json.loads(context.cursor) if context.cursor else {"requested": {}, "deleting": []}
    reaped = reap_dead_runs(context.instance, context.log.warning)
    ordered = context.instance.get_dynamic_partitions(source_files.name)
    partitions = set(ordered)
    records = {r.file_key: r for r in manifest.all()}
    # Forget requests whose run has finished with the file (a final status recorded after the
    # request) and finished deletions. A request older than REQUEST_TTL_S, or whose run died
    # (reaped above), is made again.
    now = time.time()

    def finished(k: str, v: list) -> bool:
        rec = records.get(k)
        return rec is not None and rec.status in DONE and (rec.updated_at or 0) >= v[2]

    requested = {k: v for k, v in cursor["requested"].items()
                 if not finished(k, v) and now - v[2] < REQUEST_TTL_S and not reaped}
    deleting = [k for k in cursor["deleting"] if k in records]

    adds, deletes, to_run, notes = [], [], [], []
    for source, root in sorted(roots.items()):
        scan = scan_root(root, source)
        if scan.error:
            notes.append(f"{source}: {scan.error}; nothing deleted")
            context.log.warning(notes[-1])
        plan = plan_sync(scan, records, partitions)
        for key, (size, mtime) in plan.touched.items():
            manifest.update(key, size=size, mtime=mtime)
        for key in plan.new + plan.changed + plan.stale:  # stale here: transient failures due a retry
            stat = list(scan.files[key][1:])
            if key in requested and requested[key][:2] == stat:
                continue  # already requested at this stat; its run has not finished yet
            requested[key] = stat + [now]
            to_run.append(key)
            if key in plan.new:
                adds.append(key)
        deletes += [k for k in plan.deleted if k not in deleting]

    tags = dict(LITE_WRITER_TAG) if milvus.is_lite else {}
    requests = []
    if deletes:
        requests.append(RunRequest(
            job_name=cleanup_job.name, run_key=_run_key("cleanup", deletes), tags=tags,
            run_config={"ops": {"remove_deleted_files": {"config": {"file_keys": deletes}}}},
        ))
    gone = set(deletes)
    order_after = [k for k in ordered if k not in gone] + adds
    for start, end in contiguous_ranges(to_run, order_after):
        # the request times are in the key: a file requested again (its run died, a retry is due)
        # gets a new run, not one Dagster would skip as already launched
        stats = [requested.get(k, [None, None, None]) for k in order_after[order_after.index(start): order_after.index(end) + 1]]
        requests.append(RunRequest(job_name=ingest_job.name, run_key=_run_key("ingest", start, end, stats),
                                   tags={**tags, **range_tags(start, end)}))
    partition_requests = []
    if adds:
        partition_requests.append(AddDynamicPartitionsRequest(source_files.name, adds))
    dropped = [k for k in deletes if k in partitions]
    if dropped:
        partition_requests.append(DeleteDynamicPartitionsRequest(source_files.name, dropped))
    new_cursor = json.dumps({"requested": requested, "deleting": deleting + deletes})
    if not requests and not partition_requests:
        return SensorResult(skip_reason=SkipReason("no change" + (f" ({'; '.join(notes)})" if notes else "")),
                            cursor=new_cursor)
    context.log.info(f"{len(adds)} new, {len(to_run) - len(adds)} changed or retried, {len(deletes)} deleted")
    return SensorResult(run_requests=requests, dynamic_partitions_requests=partition_requests, cursor=new_cursor)
