"""The diff logic the sensor, the schedule and the CLI share (no Dagster needed)."""

from __future__ import annotations

import os

from mmrag.manifest import FileRecord
from mmrag.orchestration.planner import contiguous_ranges
from mmrag.orchestration.requests import REQUEST_TTL_S, RequestBook
from mmrag.sources.blobs import hash_file
from mmrag.sources.sync import plan_sync, scan_root


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
    from mmrag.parsing.subtitles import pair_sidecars

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


def _rec(key: str, status: str, updated_at: float) -> FileRecord:
    return FileRecord(key, "docs", "/r", key.split(":", 1)[1], status=status, updated_at=updated_at)


def test_request_book_settles_a_request_when_its_own_run_ends():
    """The sensor's bookkeeping without Dagster: a request lives until its own run ends; a file that
    run left unfinished is requested again at once, then after the backoff; a file finished by some
    other run while its own run is in flight stays requested (no chain of runs); the cursor survives
    a round trip, and one written before run keys were kept still reads."""
    backoff = lambda attempts, now: now + 30 * 2 ** (attempts - 1)  # noqa: E731 (Settings.retry_at's shape)
    book = RequestBook()
    for k in ("docs:a.md", "docs:b.md", "docs:c.md"):
        book.request(k, [10, 1.0], now=100.0)
    book.assign(["docs:a.md", "docs:b.md"], "run-1")
    book.assign(["docs:c.md"], "run-2")
    assert sorted(book.run_keys()) == ["run-1", "run-1", "run-2"]

    # run-1 in flight, run-2 not created yet; b.md finished by another writer meanwhile: all kept
    records = {"docs:b.md": _rec("docs:b.md", "indexed", 150.0)}
    assert book.settle(records, exists={"run-1"}, ended=set(), now=200.0, retry_at=backoff) == []
    assert set(book.requested) == {"docs:a.md", "docs:b.md", "docs:c.md"}
    assert book.wait_reason("docs:a.md", [10, 1.0], 200.0) == "requested"
    assert book.wait_reason("docs:a.md", [11, 2.0], 200.0) is None  # changed since: request it again

    # run-1 ended: b.md finished (settled), a.md not (requested again at once, attempt 1)
    warnings = book.settle(records, exists={"run-1"}, ended={"run-1"}, now=300.0, retry_at=backoff)
    assert warnings == ["docs:a.md: its run ended without indexing it (attempt 1); requested again"]
    assert set(book.requested) == {"docs:c.md"} and book.retries["docs:a.md"] == [1, 300.0, 10, 1.0]
    assert book.wait_reason("docs:a.md", [10, 1.0], 300.0) is None

    # its second run ends without it too: the backoff (30 s) holds it, unless the file changes
    book.request("docs:a.md", [10, 1.0], 310.0)
    book.assign(["docs:a.md"], "run-3")
    warnings = book.settle(records, exists={"run-3"}, ended={"run-3"}, now=400.0, retry_at=backoff)
    assert warnings == ["docs:a.md: its run ended without indexing it (attempt 2); requested again in 30 s"]
    assert book.wait_reason("docs:a.md", [10, 1.0], 410.0) == "next attempt in 20 s"
    assert book.wait_reason("docs:a.md", [12, 3.0], 410.0) is None
    assert book.wait_reason("docs:a.md", [10, 1.0], 431.0) is None

    # a third run indexes it: the retry bookkeeping goes
    book.request("docs:a.md", [10, 1.0], 431.0)
    book.assign(["docs:a.md"], "run-4")
    records["docs:a.md"] = _rec("docs:a.md", "indexed", 500.0)
    assert book.settle(records, exists={"run-4"}, ended={"run-4"}, now=600.0, retry_at=backoff) == []
    assert "docs:a.md" not in book.requested and book.retries == {}

    # run-2 never created: kept up to the TTL, then dropped (the next scan requests it anew)
    book.settle(records, exists=set(), ended=set(), now=100.0 + REQUEST_TTL_S - 1, retry_at=backoff)
    assert "docs:c.md" in book.requested
    book.settle(records, exists=set(), ended=set(), now=100.0 + REQUEST_TTL_S + 1, retry_at=backoff)
    assert "docs:c.md" not in book.requested

    # deletions: kept while the clean-up runs and the file is indexed; requested again when it ended
    book.deleting = {"docs:a.md": "clean-1", "docs:gone.md": "clean-1"}
    book.settle(records, exists={"clean-1"}, ended=set(), now=700.0, retry_at=backoff)
    assert book.deleting == {"docs:a.md": "clean-1"}  # gone.md has no record left: its deletion is done
    book.settle(records, exists={"clean-1"}, ended={"clean-1"}, now=800.0, retry_at=backoff)
    assert book.deleting == {}

    # the cursor round trip; a cursor of an older version (deleting as a list, no run keys)
    again = RequestBook.from_cursor(book.to_cursor(), partitions={"docs:a.md"})
    assert again == book
    old = RequestBook.from_cursor(
        '{"requested": {"docs:a.md": [10, 1.0, 450.0]}, "deleting": ["docs:a.md"], '
        '"retries": {"docs:x.md": [1, 0, 1, 1]}}', partitions={"docs:a.md"})
    assert old.deleting == {"docs:a.md": None} and old.retries == {}  # x.md is no partition any more
    # an old request is settled when the file finished after it was made
    assert old.settle(records, set(), set(), now=950.0, retry_at=backoff) == [] and old.requested == {}
