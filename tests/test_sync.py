"""The diff logic the sensor, the schedule and the CLI share (no Dagster needed)."""

from __future__ import annotations

import os

from mmrag.blobs import hash_file
from mmrag.state import FileRecord
from mmrag.sync import contiguous_ranges, plan_sync, scan_root


def _indexed(scan, fingerprint="fp"):
    recs = {}
    for key, (rel, size, mtime) in scan.files.items():
        recs[key] = FileRecord(key, scan.source, scan.root, rel, hash_file(os.path.join(scan.root, rel)), size,
                               mtime, status="indexed", fingerprint=fingerprint)
    return recs


def test_new_changed_deleted_unchanged_and_touched(tmp_path):
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    for name in ("a.md", "b.md", "c.md", "sub/d.md"):
        (root / name).write_text(f"content of {name}")
    (root / ".hidden").write_text("ignored")
    scan = scan_root(root, "docs")
    assert sorted(scan.files) == ["docs:a.md", "docs:b.md", "docs:c.md", "docs:sub/d.md"]
    recs = _indexed(scan)
    parts = set(recs)

    (root / "a.md").write_text("changed content")               # changed
    os.remove(root / "b.md")                                    # deleted
    (root / "e.md").write_text("new file")                      # new
    os.utime(root / "c.md", (1, 1))                             # touched: same bytes
    hashed = []

    def counting_hash(p):
        hashed.append(os.path.basename(p))
        return hash_file(p)

    plan = plan_sync(scan_root(root, "docs"), recs, parts, hasher=counting_hash)
    assert plan.new == ["docs:e.md"]
    assert plan.changed == ["docs:a.md"]
    assert plan.deleted == ["docs:b.md"]
    assert sorted(plan.unchanged) == ["docs:c.md", "docs:sub/d.md"]
    assert list(plan.touched) == ["docs:c.md"]
    # Only files whose stat changed were read; new files are not hashed by the plan either.
    assert sorted(hashed) == ["a.md", "c.md"]


def test_missing_or_unreadable_root_deletes_nothing(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    (root / "a.md").write_text("x")
    scan = scan_root(root, "docs")
    recs = _indexed(scan)
    root.rename(tmp_path / "unmounted")
    scan2 = scan_root(root, "docs")
    assert scan2.error and "missing" in scan2.error
    plan = plan_sync(scan2, recs, set(recs))
    assert plan.deleted == [] and plan.to_run == []


def test_fingerprint_and_failures_make_files_stale(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    (root / "a.md").write_text("x")
    (root / "b.md").write_text("y")
    scan = scan_root(root, "docs")
    recs = _indexed(scan, fingerprint="old")
    assert plan_sync(scan, recs, set(recs)).to_run == []  # the sensor's view: content only
    assert sorted(plan_sync(scan, recs, set(recs), fingerprint="new").stale) == ["docs:a.md", "docs:b.md"]
    recs = _indexed(scan, fingerprint="new")
    recs["docs:b.md"].status = "failed"
    assert plan_sync(scan, recs, set(recs), fingerprint="new").stale == ["docs:b.md"]


def test_partition_without_record_is_rerun(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    (root / "a.md").write_text("x")
    plan = plan_sync(scan_root(root, "docs"), {}, {"docs:a.md"})
    assert plan.changed == ["docs:a.md"] and plan.new == []


def test_contiguous_ranges_batch_files_into_few_runs():
    ordered = [f"s:{i:03d}" for i in range(10)]
    assert contiguous_ranges(ordered[2:8], ordered) == [("s:002", "s:007")]
    assert contiguous_ranges(["s:001", "s:002", "s:005"], ordered) == [("s:001", "s:002"), ("s:005", "s:005")]
    assert contiguous_ranges(ordered, ordered, max_len=4) == [("s:000", "s:003"), ("s:004", "s:007"), ("s:008", "s:009")]
