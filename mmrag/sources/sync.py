"""Diff a watched folder against the index: the scan and the plan shared by the sensor, the schedule and the CLI.

A scan stats every file (cheap); only files whose size or mtime differ from the manifest are
hashed, and a file whose hash is unchanged (touched, copied back) is not re-indexed. A root that is
missing or unreadable yields no deletions: an unmounted share must not empty the index.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from mmrag.ids import file_key, is_valid_key
from mmrag.manifest import CONTENT, RETRIED, FileRecord, Status
from mmrag.sources.blobs import hash_stream
from mmrag.sources.roots import OutsideRoot, check_source, open_source, symlink_mode

DIR_LINK = "a symlink to a folder: not walked (a folder inside the root is read by its own path)"


@dataclass
class Scan:
    source: str
    root: str
    files: dict[str, tuple[str, int, float]] = field(default_factory=dict)  # key -> (rel, size, mtime)
    error: str | None = None
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (rel path, reason)


@dataclass
class SyncPlan:
    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)  # same content, but config or last outcome says redo
    unchanged: list[str] = field(default_factory=list)
    touched: dict[str, tuple[int, float]] = field(default_factory=dict)  # same hash, new stat

    @property
    def to_run(self) -> list[str]:
        return self.new + self.changed + self.stale


def scan_root(root: str | Path, source: str, symlinks: str | None = None) -> Scan:
    """Stat every file under `root` that may be read (`mmrag.sources.roots`: real path inside the root, a
    regular file); what may not is listed in `ignored` with the reason, unopened. Hidden names
    (a leading dot) are left out silently. `symlinks`: MMRAG_SYMLINKS's value by default."""
    mode = symlink_mode() if symlinks is None else symlinks
    root = Path(root).expanduser()
    scan = Scan(source, str(root.resolve()) if root.exists() else str(root))
    if not root.is_dir():
        scan.error = f"root {root} is missing or not a folder"
        return scan
    try:
        os.listdir(root)
    except OSError as e:
        scan.error = f"root {root} is unreadable: {e}"
        return scan
    root_real = Path(os.path.realpath(root))
    for dirpath, dirnames, filenames in os.walk(root, onerror=None, followlinks=False):
        walk = []
        for d in sorted(d for d in dirnames if not d.startswith(".")):
            if os.path.islink(os.path.join(dirpath, d)):
                rel = (Path(dirpath) / d).relative_to(root).as_posix()
                scan.ignored.append((rel, DIR_LINK))
            else:
                walk.append(d)
        dirnames[:] = walk
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            key = file_key(source, rel)
            if not is_valid_key(key):
                scan.ignored.append((rel, "the path has characters Dagster partition keys cannot hold"))
                continue
            try:
                _, st = check_source(root_real, full, mode)
            except OutsideRoot as e:
                scan.ignored.append((rel, str(e)))
                continue
            except OSError as e:
                scan.ignored.append((rel, f"cannot stat: {e}"))
                continue
            scan.files[key] = (rel, st.st_size, st.st_mtime)
    return scan


def _hash_source(root: str, rel: str) -> str:
    with open_source(root, rel) as f:
        return hash_stream(f)


def retry_due(rec: FileRecord, now: float, retry_failed: bool = False) -> bool:
    """Whether a file's last outcome asks for another attempt on unchanged content and config.

    A failure tied to the content (encrypted, truncated, no text, a parser limit) waits for new
    bytes or a new config; a transient one (model server down, a garbage reply, descriptions that
    fell back to extractive: `partial`) is retried once its backoff (`retry_at`) has passed.
    `retry_failed` forces both (`mmrag ingest --retry-failed`)."""
    if rec.status not in RETRIED:
        return False
    if retry_failed:
        return True
    if rec.status == Status.FAILED and rec.failure_kind == CONTENT:
        return False
    return rec.retry_at is None or rec.retry_at <= now


def plan_sync(scan: Scan, records: dict[str, FileRecord], partitions: set[str],
              fingerprint: str | None = None, hasher=None, *, now: float | None = None,
              retry_failed: bool = False) -> SyncPlan:
    """Compare a scan with the manifest and the existing partitions (one read each, set diffs).

    New, changed (content), unfinished (`pending`, or `indexing`: a run died before its graph step
    committed) files are always planned; so are transient failures whose backoff has passed
    (`retry_due`). `fingerprint` None = the sensor's view; given = also mark files stale whose
    config fingerprint differs: the schedule's and the CLI's view.
    """
    plan = SyncPlan()
    now = time.time() if now is None else now
    prefix = f"{scan.source}:"
    for key, (rel, size, mtime) in scan.files.items():
        rec = records.get(key)
        if key not in partitions or rec is None or rec.status in (Status.PENDING, Status.INDEXING) or rec.content_hash is None:
            (plan.new if key not in partitions else plan.changed).append(key)
            continue
        if rec.size != size or rec.mtime != mtime:
            try:
                digest = hasher(Path(scan.root) / rel) if hasher else _hash_source(scan.root, rel)
            except OSError:
                continue  # vanished (or turned into a link or a FIFO) since the scan: the next tick sees it
            if digest != rec.content_hash:
                plan.changed.append(key)
                continue
            plan.touched[key] = (size, mtime)
        if retry_due(rec, now, retry_failed) or (fingerprint is not None and rec.fingerprint != fingerprint):
            plan.stale.append(key)
        else:
            plan.unchanged.append(key)
    if scan.error is None:
        known = {k for k in partitions if k.startswith(prefix)} | {k for k in records if k.startswith(prefix)}
        plan.deleted = sorted(known - set(scan.files))
    _replan_companions(plan, scan, prefix)
    return plan


def _replan_companions(plan: SyncPlan, scan: Scan, prefix: str) -> None:
    """A media file and its sidecar subtitles are indexed together (the subtitles become the media's
    transcript): when one side is new, changed or deleted, the other is redone too."""
    from mmrag.parsing.subtitles import pair_sidecars

    moved = plan.new + plan.changed + plan.deleted
    if not moved:
        return
    rels = [rel for rel, _, _ in scan.files.values()]
    present = {rel: key for key, (rel, _, _) in scan.files.items()}
    deleted_rels = [k[len(prefix):] for k in plan.deleted]
    pairs = pair_sidecars(rels + deleted_rels)
    again = {present[c] for k in moved for c in pairs.get(k[len(prefix):], []) if c in present}
    for key in again:
        for group in (plan.unchanged, plan.stale):
            if key in group:
                group.remove(key)
                plan.changed.append(key)
