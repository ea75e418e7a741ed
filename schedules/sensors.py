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
their pool slots (`mmrag.runs`).
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
    cursor = json.loads(context.cursor) if context.cursor else {}
    reaped = reap_dead_runs(context.instance, context.log.warning)
    ordered = context.instance.get_dynamic_partitions(source_files.name)
    partitions = set(ordered)
    records = {r.file_key: r for r in manifest.all()}
    settings = data_dir.settings()
    now = time.time()
    old_requested = cursor.get("requested", {})  # key -> [size, mtime, requested at, run key]
    old_deleting = cursor.get("deleting", {})  # key -> clean-up run key
    if isinstance(old_deleting, list):  # a cursor written before run keys were kept
        old_deleting = dict.fromkeys(old_deleting)
    retries = {k: v for k, v in cursor.get("retries", {}).items() if k in partitions}  # key -> [n, not before, size, mtime]
    exists, ended = _runs_by_key(context.instance, [v[3] for v in old_requested.values() if len(v) > 3]
                            + [v for v in old_deleting.values() if v])

    def finished(k: str, v: list) -> bool:
        rec = records.get(k)
        return rec is not None and rec.status in DONE and (rec.updated_at or 0) >= v[2]

    # A request is settled when its own run has ended (not when some other run, a CLI ingest say,
    # finished the file: forgetting it then made every overlapping run request the next one): the
    # file finished, or it is requested again, at once the first time and after the backoff from
    # the second on. A request whose run the daemon has not created yet is kept up to REQUEST_TTL_S.
    # (A request of a cursor written before run keys were kept: settled when the file finished,
    # made again after the TTL or when a dead run was reaped above.)
    requested = {}
    for k, v in old_requested.items():
        run_key = v[3] if len(v) > 3 else None
        if run_key in ended or (run_key is None and finished(k, v)):
            if finished(k, v):
                retries.pop(k, None)
                continue
            n = retries.get(k, [0])[0] + 1
            retries[k] = [n, settings.retry_at(n - 1, now) if n > 1 else now, *v[:2]]
            context.log.warning(f"{k}: its run ended without indexing it (attempt {n}); requested again"
                                + (f" in {retries[k][1] - now:.0f} s" if n > 1 else ""))
        elif run_key in exists or (now - v[2] < REQUEST_TTL_S and (run_key is not None or not reaped)):
            requested[k] = v
    deleting = {k: v for k, v in old_deleting.items() if k in records and not (v and v in ended)}

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
            if key in retries and retries[key][2:] == stat and now < retries[key][1]:
                notes.append(f"{key}: next attempt in {retries[key][1] - now:.0f} s")
                continue  # its runs keep ending without it: wait the backoff (unless the file changes)
            requested[key] = stat + [now]
            to_run.append(key)
            if key in plan.new:
                adds.append(key)
        deletes += [k for k in plan.deleted if k not in deleting]

    tags = dict(LITE_WRITER_TAG) if milvus.is_lite else {}
    requests = []
    if deletes:
        cleanup_key = _run_key("cleanup", deletes, now)  # a retried deletion gets a new run
        deleting.update(dict.fromkeys(deletes, cleanup_key))
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
        run_key = _run_key("ingest", start, end, [requested.get(k, [None, None, None])[:3] for k in keys])
        for k in keys:
            requested[k] = requested[k][:3] + [run_key]
        requests.append(RunRequest(job_name=ingest_job.name, run_key=run_key, tags={**tags, **range_tags(start, end)}))
    partition_requests = []
    if adds:
        partition_requests.append(AddDynamicPartitionsRequest(source_files.name, adds))
    dropped = [k for k in deletes if k in partitions]
    if dropped:
        partition_requests.append(DeleteDynamicPartitionsRequest(source_files.name, dropped))
    new_cursor = json.dumps({"requested": requested, "deleting": deleting, "retries": retries})
    if not requests and not partition_requests:
        return SensorResult(skip_reason=SkipReason("no change" + (f" ({'; '.join(notes)})" if notes else "")),
                            cursor=new_cursor)
    context.log.info(f"{len(adds)} new, {len(to_run) - len(adds)} changed or retried, {len(deletes)} deleted")
    return SensorResult(run_requests=requests, dynamic_partitions_requests=partition_requests, cursor=new_cursor)
