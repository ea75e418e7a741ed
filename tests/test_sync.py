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


def test_media_and_sidecar_subtitles_are_replanned_together(tmp_path):
    """Editing, adding or removing `talk.en.vtt` redoes `talk.mp4` (its transcript comes from the
    subtitles); removing the video redoes the subtitles (now indexed on their own)."""
    from mmrag.subtitles import pair_sidecars

    assert pair_sidecars(["t/talk.mp4", "t/talk.vtt", "t/talk.en.srt", "t/talk.en-US.forced.vtt", "t/other.vtt",
                          "u/talk.vtt", "x.y.mp3", "x.y.vtt", "talk.final.vtt"]) == {
        "t/talk.mp4": ["t/talk.vtt", "t/talk.en-US.forced.vtt", "t/talk.en.srt"],  # untagged first
        "t/talk.vtt": ["t/talk.mp4"], "t/talk.en.srt": ["t/talk.mp4"], "t/talk.en-US.forced.vtt": ["t/talk.mp4"],
        "x.y.mp3": ["x.y.vtt"], "x.y.vtt": ["x.y.mp3"]}
    root = tmp_path / "m"
    root.mkdir()
    (root / "talk.mp4").write_bytes(b"not really a video")
    (root / "notes.md").write_text("notes")
    (root / "talk.en.vtt").write_text("WEBVTT\n\n00:01.000 --> 00:02.000\nhello\n")
    scan = scan_root(root, "m")
    recs = _indexed(scan)
    assert plan_sync(scan_root(root, "m"), recs, set(recs)).to_run == []

    (root / "talk.en.vtt").write_text("WEBVTT\n\n00:01.000 --> 00:02.000\nhello again\n")
    plan = plan_sync(scan_root(root, "m"), recs, set(recs))  # the sensor's view: content only
    assert sorted(plan.changed) == ["m:talk.en.vtt", "m:talk.mp4"] and plan.unchanged == ["m:notes.md"]

    os.remove(root / "talk.en.vtt")
    plan = plan_sync(scan_root(root, "m"), recs, set(recs))
    assert plan.deleted == ["m:talk.en.vtt"] and plan.changed == ["m:talk.mp4"]

    (root / "talk.en.vtt").write_text("WEBVTT\n\n00:01.000 --> 00:02.000\nhello\n")
    os.remove(root / "talk.mp4")
    plan = plan_sync(scan_root(root, "m"), recs, set(recs), fingerprint="fp")
    assert plan.deleted == ["m:talk.mp4"] and plan.changed == ["m:talk.en.vtt"]
