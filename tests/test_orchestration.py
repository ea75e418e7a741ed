"""The sensor, the schedule, the definitions and Milvus Lite's one-process rule, on a real instance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from dagster import (
    AddDynamicPartitionsRequest,
    DagsterInstance,
    Definitions,
    DeleteDynamicPartitionsRequest,
    build_schedule_context,
    build_sensor_context,
    materialize,
)
from helpers import TEXT, cli_json, rows_by_file

from mmrag.config import Settings
from mmrag.manifest import Manifest

RANGE = ("dagster/asset_partition_range_start", "dagster/asset_partition_range_end")


def _defs():
    from mmrag.definitions import defs

    return defs


def _sensor_tick(instance, cursor=None):
    from mmrag_resources.data_dir import DataDirResource
    from mmrag_resources.milvus import MilvusResource
    from schedules.sensors import watch_folders

    # As the daemon does: the context is a context manager, so what it opens is closed after the tick.
    with build_sensor_context(instance=instance, cursor=cursor,
                              resources={"data_dir": DataDirResource(), "milvus": MilvusResource()}) as ctx:
        return watch_folders(ctx)


def _apply(instance, result):
    """Do what the daemon does with a SensorResult: partition requests first, then run the runs."""
    for req in result.dynamic_partitions_requests:
        if isinstance(req, AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
        elif isinstance(req, DeleteDynamicPartitionsRequest):
            for k in req.partition_keys:
                instance.delete_dynamic_partition(req.partitions_def_name, k)
    defs = _defs()
    for rr in result.run_requests:
        job = defs.resolve_job_def(rr.job_name)
        res = job.execute_in_process(instance=instance, tags={**rr.tags, "dagster/run_key": rr.run_key},
                                     run_config=rr.run_config or None)
        assert res.success


def test_definitions_load_and_lineage():
    defs = _defs()
    Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    order = ["raw_files", "parsed_blocks", "modal_descriptions", "embeddings", "milvus_partitions", "lightrag_graph"]
    for up, down in zip(order, order[1:]):
        from dagster import AssetKey

        assert AssetKey(up) in graph.get(AssetKey(down)).parent_keys
    assert {j.name for j in defs.resolve_all_job_defs()} >= {"ingest_job", "cleanup_job"}


@pytest.mark.slow
def test_sensor_adds_changes_deletes_and_batches(mmrag_env, tmp_path, monkeypatch):
    root = tmp_path / "watched"
    root.mkdir()
    for n in ("a", "b", "d"):
        (root / f"{n}.md").write_text(f"# {n}\n\nFile {n} talks about ducks number {n}.\n")
    monkeypatch.setenv("MMRAG_WATCH", f"w={root}")
    instance = DagsterInstance.get()

    first = _sensor_tick(instance)
    adds = [r for r in first.dynamic_partitions_requests if isinstance(r, AddDynamicPartitionsRequest)]
    assert [list(r.partition_keys) for r in adds] == [["w:a.md", "w:b.md", "w:d.md"]]
    assert len(first.run_requests) == 1  # three new files, one run
    assert tuple(first.run_requests[0].tags[t] for t in RANGE) == ("w:a.md", "w:d.md")
    assert first.run_requests[0].tags.get("mmrag/index-writer") == "milvus-lite"
    # The same tick again before the run happened: nothing is requested twice.
    again = _sensor_tick(instance, first.cursor)
    assert not again.run_requests and not again.dynamic_partitions_requests
    _apply(instance, first)
    assert set(rows_by_file(TEXT)) == {"w:a.md", "w:b.md", "w:d.md"}

    quiet = _sensor_tick(instance, first.cursor)
    assert not quiet.run_requests and "no change" in quiet.skip_reason.skip_message

    time.sleep(0.01)
    (root / "a.md").write_text("# a\n\nFile a was edited: now about geese.\n")
    (root / "b.md").unlink()
    (root / "c.md").write_text("# c\n\nA new file about coots.\n")
    os.utime(root / "d.md")  # touched, same bytes: not re-indexed
    tick = _sensor_tick(instance, quiet.cursor)
    by_job = {}
    for rr in tick.run_requests:
        by_job.setdefault(rr.job_name, []).append(rr)
    assert by_job["cleanup_job"][0].run_config["ops"]["remove_deleted_files"]["config"]["file_keys"] == ["w:b.md"]
    ranges = sorted(tuple(rr.tags[t] for t in RANGE) for rr in by_job["ingest_job"])
    assert ranges == [("w:a.md", "w:a.md"), ("w:c.md", "w:c.md")]  # d.md sits between them and is unchanged
    dels = [list(r.partition_keys) for r in tick.dynamic_partitions_requests if isinstance(r, DeleteDynamicPartitionsRequest)]
    assert dels == [["w:b.md"]]
    before = rows_by_file(TEXT)
    _apply(instance, tick)
    after = rows_by_file(TEXT)
    assert set(after) == {"w:a.md", "w:c.md", "w:d.md"}
    assert after["w:d.md"] == before["w:d.md"] and after["w:a.md"] != before["w:a.md"]

    # A root that disappears (an unmounted share) deletes nothing.
    root.rename(tmp_path / "gone")
    missing = _sensor_tick(instance, tick.cursor)
    assert not missing.run_requests and not missing.dynamic_partitions_requests
    assert "missing" in missing.skip_reason.skip_message


@pytest.mark.slow
def test_schedule_reindexes_only_stale_partitions(mmrag_env, tmp_path, capsys, monkeypatch):
    from mmrag_resources.data_dir import DataDirResource
    from mmrag_resources.embedders import ImageEmbedderResource, TextEmbedderResource
    from mmrag_resources.llm import LLMResource
    from mmrag_resources.milvus import MilvusResource
    from mmrag_resources.parsers import ParserResource
    from mmrag_resources.whisper import WhisperResource
    from schedules.reindex import reindex_schedule

    root = tmp_path / "docs"
    root.mkdir()
    for n in ("a", "b", "c"):
        (root / f"{n}.md").write_text(f"# {n}\n\nDocument {n} about grebes.\n")
    assert cli_json(capsys, "ingest", str(root), "--source", "docs")[0] == 0
    instance = DagsterInstance.get()
    resources = {"data_dir": DataDirResource(), "milvus": MilvusResource(), "parsers": ParserResource(),
                 "llm": LLMResource(), "text_embedder": TextEmbedderResource(), "image_embedder": ImageEmbedderResource(),
                 "whisper": WhisperResource()}

    def tick():
        from datetime import datetime, timezone

        # Entered as the daemon does: the context opens an instance from the ref (which makes its
        # defs-state storage Dagster's current one) and closes it on exit. Left open, that storage
        # outlived its instance and a later test's `materialize` failed on the dead weakref.
        with build_schedule_context(instance=instance, resources=resources,
                                    scheduled_execution_time=datetime.now(timezone.utc)) as ctx:
            return reindex_schedule(ctx)

    assert "nothing stale" in tick().skip_message
    # Same bytes written back with a new mtime: still not stale.
    (root / "b.md").write_text("# b\n\nDocument b about grebes.\n")
    assert "nothing stale" in tick().skip_message
    (root / "b.md").write_text("# b\n\nDocument b is now about herons.\n")
    reqs = tick()
    assert [tuple(r.tags[t] for t in RANGE) for r in reqs] == [("docs:b.md", "docs:b.md")]
    # A new chunk size changes the config fingerprint: every file is stale, batched in one run.
    monkeypatch.setenv("MMRAG_CHUNK_SIZE", "90")
    reqs = tick()
    assert [tuple(r.tags[t] for t in RANGE) for r in reqs] == [("docs:a.md", "docs:c.md")]


def test_materialize_one_partition_with_a_temporary_instance(mmrag_env, tmp_path):
    from mmrag.definitions import default_resources
    from mmrag_assets.jobs import ASSETS

    root = tmp_path / "docs"
    root.mkdir()
    (root / "note.md").write_text("# Note\n\nA single note about shovelers.\n")
    Manifest(Settings.from_env().state_path).set_source("docs", str(root))
    resources = default_resources()
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("source_files", ["docs:note.md"])
        res = materialize(ASSETS, partition_key="docs:note.md", instance=instance, resources=resources)
        assert res.success
        mats = res.asset_materializations_for_node("milvus_partitions")
        assert mats and mats[0].metadata["ok"].value == 1
    assert list(rows_by_file(TEXT)) == ["docs:note.md"]


@pytest.mark.slow
def test_query_while_another_process_holds_milvus_lite(mmrag_env, tmp_path, capsys):
    """This test process ingested, so it holds the Lite data dir, as a running ingest would."""
    root = tmp_path / "docs"
    root.mkdir()
    (root / "x.md").write_text("# X\n\nSomething about wigeons.\n")
    assert cli_json(capsys, "ingest", str(root), "--source", "docs")[0] == 0
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "mmrag.cli", "query", "wigeons"], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "in use by another process" in proc.stderr and "Traceback" not in proc.stderr
    assert time.time() - t0 < 60  # a clear message, not a hang


@pytest.mark.slow
def test_cleanup_spares_a_file_recreated_after_its_deletion_was_requested(mmrag_env, tmp_path, capsys):
    root = tmp_path / "docs"
    root.mkdir()
    (root / "back.md").write_text("# Back\n\nThis file was deleted and put back before the clean-up ran.\n")
    (root / "gone.md").write_text("# Gone\n\nThis one stays deleted.\n")
    assert cli_json(capsys, "ingest", str(root), "--source", "docs")[0] == 0
    (root / "gone.md").unlink()
    res = _defs().resolve_job_def("cleanup_job").execute_in_process(
        instance=DagsterInstance.get(),
        run_config={"ops": {"remove_deleted_files": {"config": {"file_keys": ["docs:back.md", "docs:gone.md"]}}}})
    assert res.success
    assert res.output_for_node("remove_deleted_files") == {"files": 1, "rows_deleted": 1, "skipped_recreated": 1}
    assert set(rows_by_file(TEXT)) == {"docs:back.md"}


def test_sensor_frees_a_dead_run_and_requests_its_files_again(mmrag_env, tmp_path, monkeypatch):
    """A daemon-launched run whose process died holds its pool slot and leaves its files requested in
    the cursor: the next tick marks it failed, frees the slot and requests the files in a new run."""
    import uuid

    from dagster import DagsterRunStatus
    from dagster._core.storage.dagster_run import DagsterRun

    from mmrag.orchestration.runs import owner_tags

    root, instance, first = _watching_one_file(tmp_path, monkeypatch)
    assert [rr.tags[RANGE[0]] for rr in first.run_requests] == ["docs:a.md"]
    _apply_partitions_only(instance, first)
    quiet = _sensor_tick(instance, first.cursor)
    assert not quiet.run_requests  # requested, its run not finished: not again

    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid whose process has exited
    run_id = str(uuid.uuid4())
    instance.add_run(DagsterRun(job_name="ingest_job", run_id=run_id, status=DagsterRunStatus.STARTED,
                                tags={**first.run_requests[0].tags, "dagster/run_key": first.run_requests[0].run_key,
                                      **owner_tags(gone.pid)}))  # as the daemon makes it
    instance.event_log_storage.set_concurrency_slots("mmrag_index", 1)
    assert instance.event_log_storage.claim_concurrency_slot("mmrag_index", run_id, "milvus_partitions", 0).is_claimed
    again = _sensor_tick(instance, quiet.cursor)
    assert instance.get_run_by_id(run_id).status == DagsterRunStatus.FAILURE
    assert instance.event_log_storage.get_concurrency_info("mmrag_index").active_slot_count == 0
    assert [rr.tags[RANGE[0]] for rr in again.run_requests] == ["docs:a.md"]
    assert again.run_requests[0].run_key != first.run_requests[0].run_key  # a new run, not a skipped duplicate


def _record_run(instance, request, status) -> str:
    """The run the daemon makes of a run request (its run key as a tag), in `status`."""
    import uuid

    from dagster._core.storage.dagster_run import DagsterRun

    run_id = str(uuid.uuid4())
    instance.add_run(DagsterRun(job_name=request.job_name, run_id=run_id, status=status,
                                tags={**request.tags, "dagster/run_key": request.run_key}))
    return run_id


@pytest.mark.slow
def test_a_file_whose_run_ended_without_it_is_requested_again_then_with_backoff(mmrag_env, tmp_path, monkeypatch):
    """A run marked failed by someone else (Dagster's code server saw its process killed; its run
    monitoring; a step error) leaves nothing for the sensor's own reaper: the file is requested again
    at once, and after a second such run only once the backoff has passed. A run still in flight
    keeps its files requested; so does a deletion whose clean-up run is in flight, and one whose
    clean-up run failed is requested again."""
    from dagster import DagsterRunStatus

    root = tmp_path / "docs"
    root.mkdir()
    (root / "a.md").write_text("# Alpha\n\nAlpha counts pochards.\n")
    (root / "b.md").write_text("# Beta\n\nBeta counts smews.\n")
    monkeypatch.setenv("MMRAG_WATCH", f"docs={root}")
    monkeypatch.setenv("MMRAG_RETRY_BACKOFF_S", "2")
    instance = DagsterInstance.get()
    first = _sensor_tick(instance)
    _apply_partitions_only(instance, first)
    [req] = first.run_requests
    run_id = _record_run(instance, req, DagsterRunStatus.STARTED)
    tick = _sensor_tick(instance, first.cursor)
    assert not tick.run_requests  # in flight: not again
    # Another writer (an overlapping CLI ingest) finishes a.md, then the run in flight marks it
    # `indexing` again: still that run's file, not a new request (each overlap made the next run).
    from mmrag.manifest import FileRecord

    manifest, st = Manifest(Settings.from_env().state_path), (root / "a.md").stat()
    manifest.upsert(FileRecord("docs:a.md", "docs", str(root), "a.md", content_hash="x", size=st.st_size,
                               mtime=st.st_mtime, status="indexed"))
    tick = _sensor_tick(instance, tick.cursor)
    manifest.update("docs:a.md", status="indexing")
    tick = _sensor_tick(instance, tick.cursor)
    assert not tick.run_requests
    instance.report_run_failed(instance.get_run_by_id(run_id), message="killed (as the code server reports it)")

    again = _sensor_tick(instance, tick.cursor)
    assert [(rr.tags[RANGE[0]], rr.tags[RANGE[1]]) for rr in again.run_requests] == [("docs:a.md", "docs:b.md")]
    assert again.run_requests[0].run_key != req.run_key
    _record_run(instance, again.run_requests[0], DagsterRunStatus.FAILURE)
    waiting = _sensor_tick(instance, again.cursor)  # a second run ended without them: the backoff
    assert not waiting.run_requests and "next attempt in" in waiting.skip_reason.skip_message
    time.sleep(2.5)
    later = _sensor_tick(instance, waiting.cursor)
    assert [rr.tags[RANGE[0]] for rr in later.run_requests] == ["docs:a.md"]

    # Indexed (the run did its work): the bookkeeping is forgotten; then a deletion whose clean-up fails.
    _apply(instance, later)
    done = _sensor_tick(instance, later.cursor)
    assert not done.run_requests and json.loads(done.cursor)["retries"] == {}
    (root / "b.md").unlink()
    delete = _sensor_tick(instance, done.cursor)
    [cleanup] = [rr for rr in delete.run_requests if rr.job_name == "cleanup_job"]
    cleanup_id = _record_run(instance, cleanup, DagsterRunStatus.STARTED)
    assert not _sensor_tick(instance, delete.cursor).run_requests
    instance.report_run_failed(instance.get_run_by_id(cleanup_id), message="clean-up failed")
    retry = _sensor_tick(instance, delete.cursor)
    assert [rr.run_config["ops"]["remove_deleted_files"]["config"]["file_keys"] for rr in retry.run_requests] \
        == [["docs:b.md"]]


def _watching_one_file(tmp_path, monkeypatch):
    """A watched folder `docs` holding a.md, and the first sensor tick over it: (root, instance, tick)."""
    root = tmp_path / "docs"
    root.mkdir()
    (root / "a.md").write_text("# Alpha\n\nAlpha counts pochards.\n")
    monkeypatch.setenv("MMRAG_WATCH", f"docs={root}")
    instance = DagsterInstance.get()
    return root, instance, _sensor_tick(instance)


def _apply_partitions_only(instance, result):
    for req in result.dynamic_partitions_requests:
        if isinstance(req, AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))


def test_new_files_wait_while_a_requested_run_is_queued_then_go_in_one_run(mmrag_env, tmp_path, monkeypatch):
    """A burst faster than runs end: while the sensor's run is queued (not launched), new files are not
    made runs of their own behind it; once it is launched, everything that came meanwhile is one run."""
    from dagster import DagsterRunStatus

    root, instance, first = _watching_one_file(tmp_path, monkeypatch)
    _apply_partitions_only(instance, first)
    from dagster import DagsterEvent, DagsterEventType

    # Made, not launched (the daemon's QUEUED needs a code location's origin to be recorded by hand; the
    # sensor treats NOT_STARTED and QUEUED alike).
    run_id = _record_run(instance, first.run_requests[0], DagsterRunStatus.NOT_STARTED)
    cursor = first.cursor
    for name in ("b", "c", "d"):
        (root / f"{name}.md").write_text(f"# {name}\n\nNote {name} counts teals.\n")
        tick = _sensor_tick(instance, cursor)
        assert not tick.run_requests and "still queued" in tick.skip_reason.skip_message
        cursor = tick.cursor
    # The daemon launches it: RUN_STARTING, as its run coordinator reports it.
    instance.report_dagster_event(DagsterEvent(DagsterEventType.RUN_STARTING.value, "ingest_job"), run_id)
    assert instance.get_run_by_id(run_id).status == DagsterRunStatus.STARTING
    tick = _sensor_tick(instance, cursor)
    assert [tuple(rr.tags[t] for t in RANGE) for rr in tick.run_requests] == [("docs:b.md", "docs:d.md")]
