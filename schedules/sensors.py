"""watch_folders: new, changed and deleted files → partition adds/deletes and batched run requests.

Each tick reads the partitions and the manifest once and diffs sets; it stats every file and hashes
only those whose size or mtime changed. New and changed files go into runs of contiguous partition
ranges (many files per run); deleted files get one clean-up run; transient failures whose backoff
has passed are requested again. The cursor remembers what was requested and by which run key, so a
slow run is not requested twice; a file whose run ended without finishing it (the run failed, was
killed, or was marked failed by Dagster's run monitoring or code server) is requested again: at once
the first time, then after the retry backoff (MMRAG_RETRY_BACKOFF_S, doubling), so a run that keeps
failing is not relaunched every tick. Deletions whose clean-up run ended without removing the file
are requested again the same way. Each tick first marks runs whose process died as failed and frees
their pool slots (`mmrag.orchestration.runs`).
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

from mmrag.orchestration.planner import contiguous_ranges, range_tags
from mmrag.orchestration.requests import RequestBook
from mmrag.orchestration.runs import reap_dead_runs
from mmrag.sources.sync import plan_sync, scan_root
from mmrag_assets.cleanup import cleanup_job
from mmrag_assets.jobs import LITE_WRITER_TAG, ingest_job
from mmrag_assets.partitions import source_files
from mmrag_resources.data_dir import DataDirResource
from mmrag_resources.milvus import MilvusResource
from schedules.watch import sensor_interval_s, sensor_status, watched_roots

RUN_KEY_TAG = "dagster/run_key"


def _run_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _runs_by_key(instance, run_keys: list[str]) -> tuple[set[str], set[str]]:
    """Of `run_keys`: those with a run (queued, in flight or ended), and those whose run has ended
    (success, failure, canceled). A key whose run the daemon has not created yet is in neither."""
    from dagster import RunsFilter

    keys = sorted(set(run_keys))
    exists: set[str] = set()
    ended: set[str] = set()
    for i in range(0, len(keys), 500):
        for run in instance.get_runs(RunsFilter(tags={RUN_KEY_TAG: keys[i:i + 500]})):
            exists.add(run.tags[RUN_KEY_TAG])
            if run.is_finished:
                ended.add(run.tags[RUN_KEY_TAG])
    return exists, ended


@sensor(name="watch_folders", jobs=[ingest_job, cleanup_job], minimum_interval_seconds=sensor_interval_s(),
        default_status=sensor_status(), description="Ingest new and changed files of the watched folders; clean up deleted ones.")
def watch_folders(context: SensorEvaluationContext, data_dir: DataDirResource, milvus: MilvusResource):
    manifest = data_dir.manifest()
    roots = watched_roots(manifest)
    if not roots:
        return SkipReason("no folder is watched: run `mmrag ingest ROOT` once or set MMRAG_WATCH")
    reaped = reap_dead_runs(context.instance, context.log.warning)
    ordered = context.instance.get_dynamic_partitions(source_files.name)
    partitions = set(ordered)
    records = {r.file_key: r for r in manifest.all()}
    settings = data_dir.settings()
    now = time.time()
    book = RequestBook.from_cursor(context.cursor, partitions)
    exists, ended = _runs_by_key(context.instance, book.run_keys())
    for warning in book.settle(records, exists, ended, now, settings.retry_at, reaped=bool(reaped)):
        context.log.warning(warning)

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
            wait = book.wait_reason(key, stat, now)
            if wait:
                if wait != "requested":
                    notes.append(f"{key}: {wait}")
                continue
            book.request(key, stat, now)
            to_run.append(key)
            if key in plan.new:
                adds.append(key)
        deletes += [k for k in plan.deleted if k not in book.deleting]

    tags = dict(LITE_WRITER_TAG) if milvus.is_lite else {}
    requests = []
    if deletes:
        cleanup_key = _run_key("cleanup", deletes, now)  # a retried deletion gets a new run
        book.deleting.update(dict.fromkeys(deletes, cleanup_key))
        requests.append(RunRequest(
            job_name=cleanup_job.name, run_key=cleanup_key, tags=tags,
            run_config={"ops": {"remove_deleted_files": {"config": {"file_keys": deletes}}}},
        ))
    gone = set(deletes)
    order_after = [k for k in ordered if k not in gone] + adds
    for start, end in contiguous_ranges(to_run, order_after):
        # the request times are in the key: a file requested again (its run died, a retry is due)
        # gets a new run, not one Dagster would skip as already launched
        keys = order_after[order_after.index(start): order_after.index(end) + 1]
        run_key = _run_key("ingest", start, end, [book.requested[k][:3] for k in keys])
        book.assign(keys, run_key)
        requests.append(RunRequest(job_name=ingest_job.name, run_key=run_key, tags={**tags, **range_tags(start, end)}))
    partition_requests = []
    if adds:
        partition_requests.append(AddDynamicPartitionsRequest(source_files.name, adds))
    dropped = [k for k in deletes if k in partitions]
    if dropped:
        partition_requests.append(DeleteDynamicPartitionsRequest(source_files.name, dropped))
    new_cursor = book.to_cursor()
    if not requests and not partition_requests:
        return SensorResult(skip_reason=SkipReason("no change" + (f" ({'; '.join(notes)})" if notes else "")),
                            cursor=new_cursor)
    context.log.info(f"{len(adds)} new, {len(to_run) - len(adds)} changed or retried, {len(deletes)} deleted")
    return SensorResult(run_requests=requests, dynamic_partitions_requests=partition_requests, cursor=new_cursor)
