"""Run planning, the one chain behind `mmrag ingest`, the `watch_folders` sensor and the
`reindex_schedule`: mark dead runs failed, diff the folders against the index, then cut the work into
Dagster runs with their tags.

- `survey`: dead runs reaped (`mmrag.orchestration.runs`), the partitions and the manifest read once,
  each scan diffed (`mmrag.sources.sync.plan_sync`), and files whose bytes are unchanged but whose
  stat moved recorded as such.
- `cleanup_run` and `ingest_runs`: the runs for deleted files (one) and for files to (re)index
  (contiguous ranges of partitions, many files per run, each run carrying its range tags and, on a
  Milvus Lite index, the tag that lets one writer run at a time).

The callers add what only they know: the sensor its run keys and request book, the schedule its run
keys, the CLI its owner tags as it executes the runs in-process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

from mmrag.manifest import FileRecord, Manifest
from mmrag.sources.sync import Scan, SyncPlan, plan_sync

PARTITIONS = "source_files"  # the dynamic partitions: one per source file (mmrag_assets.partitions)
INGEST_JOB, CLEANUP_JOB = "ingest_job", "cleanup_job"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
# Runs that write a Milvus Lite index carry this tag; dagster.yaml lets one such run at a time.
LITE_WRITER_TAG = {"mmrag/index-writer": "milvus-lite"}
MAX_FILES_PER_RUN = 200


@dataclass
class PlannedRun:
    """One Dagster run to launch: the job, the files it carries, its tags and run config."""

    job: str
    keys: list[str]
    tags: dict[str, str] = field(default_factory=dict)
    run_config: dict = field(default_factory=dict)


@dataclass
class Survey:
    """What one look at the index and the folders found."""

    reaped: list[str]  # runs found dead and marked failed
    ordered: list[str]  # the partitions, in Dagster's order
    records: dict[str, FileRecord]
    plans: list[tuple[Scan, SyncPlan]]

    @property
    def partitions(self) -> set[str]:
        return set(self.ordered)


def survey(instance, manifest: Manifest, scans: Iterable[Scan], *, fingerprint: str | None = None,
           retry_failed: bool = False, log: Callable[[str], None] = lambda msg: None) -> Survey:
    """Reap dead runs, then diff each scan against the manifest and the partitions. `fingerprint`:
    also plan files indexed with another config (the schedule's and the CLI's view; the sensor
    passes None). Files whose stat changed with their bytes the same are updated in the manifest."""
    from mmrag.orchestration.runs import reap_dead_runs

    reaped = reap_dead_runs(instance, log)
    ordered = list(instance.get_dynamic_partitions(PARTITIONS))
    partitions = set(ordered)
    records = {r.file_key: r for r in manifest.all()}
    plans = []
    for scan in scans:
        plan = plan_sync(scan, records, partitions, fingerprint=fingerprint, retry_failed=retry_failed)
        for key, (size, mtime) in plan.touched.items():
            manifest.update(key, size=size, mtime=mtime)
        plans.append((scan, plan))
    return Survey(reaped, ordered, records, plans)


def writer_tags(lite: bool) -> dict[str, str]:
    return dict(LITE_WRITER_TAG) if lite else {}


def cleanup_run(keys: list[str], *, lite: bool) -> PlannedRun:
    """The run that removes deleted files from the index (rows, graph, manifest, stage outputs)."""
    return PlannedRun(CLEANUP_JOB, list(keys), writer_tags(lite),
                      {"ops": {"remove_deleted_files": {"config": {"file_keys": list(keys)}}}})


def ingest_runs(keys: list[str], ordered: list[str], *, lite: bool,
                max_files: int = MAX_FILES_PER_RUN) -> list[PlannedRun]:
    """Runs over contiguous ranges of `ordered` (the partitions as the runs will see them) that hold
    `keys`, at most `max_files` files each."""
    out = []
    for start, end in contiguous_ranges(keys, ordered, max_files):
        span = ordered[ordered.index(start): ordered.index(end) + 1]
        out.append(PlannedRun(INGEST_JOB, span, {**writer_tags(lite), **range_tags(start, end)}))
    return out


def contiguous_ranges(keys: list[str], ordered: list[str], max_len: int = MAX_FILES_PER_RUN) -> list[tuple[str, str]]:
    """Group keys into runs of adjacent partitions, one run request per range (many files per run),
    at most `max_len` files each so one run's per-file outputs stay small in memory."""
    wanted = set(keys)
    ranges, start, prev, n = [], None, None, 0
    for k in ordered:
        if k in wanted and n < max_len:
            if start is None:
                start, n = k, 0
            prev, n = k, n + 1
            continue
        if start is not None:
            ranges.append((start, prev))
            start, n = None, 0
        if k in wanted:
            start, prev, n = k, k, 1
    if start is not None:
        ranges.append((start, prev))
    return ranges


def range_tags(start: str, end: str) -> dict[str, str]:
    return {RANGE_START_TAG: start, RANGE_END_TAG: end}
