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

While a run this sensor requested is still queued (waiting for the daemon to launch it: the runs of a
Milvus Lite index go one at a time), new work waits for the next tick instead of becoming a run of its
own behind it: when files keep coming faster than runs end (a burst, a busy machine), they are batched
into one run per launch, not one run per tick, each paying the process start and the model loads.
"""


import hashlib
import json
import time
import warnings

from dagster import (
    AddDynamicPartitionsRequest,
    BetaWarning,
    DeleteDynamicPartitionsRequest,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from mmrag.orchestration.planner import cleanup_run, ingest_runs, survey
from mmrag.orchestration.requests import RequestBook
from mmrag.sources.sync import scan_root
from mmrag_assets.cleanup import cleanup_job
from mmrag_assets.jobs import ingest_job
from mmrag_assets.partitions import source_files
from mmrag_resources.data_dir import DataDirResource
from mmrag_resources.milvus import MilvusResource
from schedules.watch import sensor_interval_s, sensor_status, watched_roots

RUN_KEY_TAG = "dagster/run_key"


def _run_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _runs_by_key(instance, run_keys: list[str]) -> tuple[set[str], set[str], set[str]]:
    """Of `run_keys`: those with a run (queued, in flight or ended), those whose run has ended
    (success, failure, canceled), and those whose run is still queued (not launched yet). A key whose
    run the daemon has not created yet is in none."""
    from dagster import DagsterRunStatus, RunsFilter

    keys = sorted(set(run_keys))
    exists: set[str] = set()
    ended: set[str] = set()
    queued: set[str] = set()
    for i in range(0, len(keys), 500):
        for run in instance.get_runs(RunsFilter(tags={RUN_KEY_TAG: keys[i:i + 500]})):
            exists.add(run.tags[RUN_KEY_TAG])
            if run.is_finished:
                ended.add(run.tags[RUN_KEY_TAG])
            elif run.status in (DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED):
                queued.add(run.tags[RUN_KEY_TAG])
    return exists, ended, queued


def _watch_folders(context: SensorEvaluationContext, data_dir: DataDirResource, milvus: MilvusResource):
    manifest = data_dir.manifest()
    roots = watched_roots(manifest)
    if not roots:
        return SkipReason("no folder is watched: run `mmrag ingest ROOT` once or set MMRAG_WATCH")
    settings = data_dir.settings()
    found = survey(context.instance, manifest, [scan_root(root, source) for source, root in sorted(roots.items())],
                   log=context.log.warning)
    now = time.time()
    book = RequestBook.from_cursor(context.cursor, found.partitions)
    exists, ended, queued = _runs_by_key(context.instance, book.run_keys())
    for warning in book.settle(found.records, exists, ended, now, settings.retry_at, reaped=bool(found.reaped)):
        context.log.warning(warning)
    if queued:  # new work joins the run after it, in one batch, once it is launched
        return SensorResult(skip_reason=SkipReason(f"{len(queued)} requested run(s) still queued: new changes wait "
                                                   "to be batched into the next run"), cursor=book.to_cursor())

    adds, deletes, to_run, notes = [], [], [], []
    for scan, plan in found.plans:
        if scan.error:
            notes.append(f"{scan.source}: {scan.error}; nothing deleted")
            context.log.warning(notes[-1])
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

    requests = []
    if deletes:
        run = cleanup_run(deletes, lite=milvus.is_lite)
        cleanup_key = _run_key("cleanup", deletes, now)  # a retried deletion gets a new run
        book.deleting.update(dict.fromkeys(deletes, cleanup_key))
        requests.append(RunRequest(job_name=run.job, run_key=cleanup_key, tags=run.tags, run_config=run.run_config))
    gone = set(deletes)
    order_after = [k for k in found.ordered if k not in gone] + adds
    for run in ingest_runs(to_run, order_after, lite=milvus.is_lite):
        # the request times are in the key: a file requested again (its run died, a retry is due)
        # gets a new run, not one Dagster would skip as already launched
        run_key = _run_key("ingest", run.keys[0], run.keys[-1], [book.requested[k][:3] for k in run.keys])
        book.assign(run.keys, run_key)
        requests.append(RunRequest(job_name=run.job, run_key=run_key, tags=run.tags))
    partition_requests = []
    if adds:
        partition_requests.append(AddDynamicPartitionsRequest(source_files.name, adds))
    dropped = [k for k in deletes if k in found.partitions]
    if dropped:
        partition_requests.append(DeleteDynamicPartitionsRequest(source_files.name, dropped))
    new_cursor = book.to_cursor()
    if not requests and not partition_requests:
        return SensorResult(skip_reason=SkipReason("no change" + (f" ({'; '.join(notes)})" if notes else "")),
                            cursor=new_cursor)
    context.log.info(f"{len(adds)} new, {len(to_run) - len(adds)} changed or retried, {len(deletes)} deleted")
    return SensorResult(run_requests=requests, dynamic_partitions_requests=partition_requests, cursor=new_cursor)



# Dagster 1.13 passes `owners=None` to SensorDefinition's beta parameter itself (its @sensor, and each
# copy it makes when the definitions bind resources) and warns about it in every process that loads
# the definitions: noise to users, so this one warning is not shown.
warnings.filterwarnings("ignore", message="Parameter `owners` of initializer `SensorDefinition", category=BetaWarning)
watch_folders = sensor(name="watch_folders", jobs=[ingest_job, cleanup_job], minimum_interval_seconds=sensor_interval_s(),
                       default_status=sensor_status(),
                       description="Ingest new and changed files of the watched folders; clean up deleted ones.",
                       )(_watch_folders)
