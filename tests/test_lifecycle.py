"""Re-running, changing and deleting files through the real CLI → Dagster runs → Milvus Lite + LightRAG."""

from __future__ import annotations

import pytest
from conftest import SAMPLE, copy_corpus
from helpers import IMAGE, TEXT, cli_json, rows_by_file
from openai_server import lightrag_aware


def _write(root, name, text):
    (root / name).write_text(text)


SHARED_PARA = "Shared paragraph. Every file in this test quotes the same sentence about mallards and teals."


def _small_corpus(root):
    root.mkdir(parents=True, exist_ok=True)
    _write(root, "a.md", "# Alpha\n\nAlpha file talks about pochards diving for food.\n")
    _write(root, "b.md", f"# Common\n\n{SHARED_PARA}\n\n# Bravo\n\nBravo file alone mentions eiders.\n")
    _write(root, "c.md", f"# Common\n\n{SHARED_PARA}\n\n# Charlie\n\nCharlie file alone mentions scoters.\n")
    _write(root, "d.md", "# Delta\n\nDelta file talks about swans.\n")
    return root


@pytest.mark.slow
def test_reingest_is_idempotent_and_makes_no_llm_call(mmrag_env, tmp_path, capsys, openai_server, monkeypatch):
    openai_server.responder = lightrag_aware
    monkeypatch.setenv("MMRAG_LLM_URL", openai_server.base_url)
    monkeypatch.setenv("MMRAG_LLM_MODEL", "fake-llm")
    monkeypatch.setenv("MMRAG_VLM_MODEL", "fake-vlm")
    monkeypatch.setenv("MMRAG_LLM_RETRIES", "0")
    root = copy_corpus(SAMPLE, tmp_path / "docs", ["duck.md", "word_sample.docx", "powerpoint_with_image.pptx"])
    from mmrag.parsing import worker

    spawned, take = [], worker._take_spare
    monkeypatch.setattr(worker, "_spawn", lambda config, _spawn=worker._spawn: spawned.append(config) or _spawn(config))
    monkeypatch.setattr(worker, "_take_spare", lambda config: spawned.append("adopted") or take(config))
    code, first = cli_json(capsys, "ingest", str(root), "--source", "docs")
    assert code == 0 and first["indexed"] == 3, first
    # the parse worker started before the run (loading Docling meanwhile) served the run's parse step
    assert len(spawned) == 2 and spawned[1] == "adopted" and not worker._spare, spawned
    calls = openai_server.count()
    vision = [r for r in openai_server.chat_requests() if r["model"] == "fake-vlm"]
    assert calls > 0 and vision, "images went to the VLM, extraction to the LLM"
    text_ids, image_ids = rows_by_file(TEXT), rows_by_file(IMAGE)

    code, second = cli_json(capsys, "ingest", str(root), "--source", "docs")
    assert code == 0 and second == first
    assert rows_by_file(TEXT) == text_ids and rows_by_file(IMAGE) == image_ids
    assert openai_server.count() == calls  # nothing re-ran

    # Forcing a re-materialization of a file: descriptions and LightRAG extractions come from caches.
    from dagster import DagsterInstance

    from mmrag.definitions import defs
    from mmrag.orchestration.planner import range_tags

    key = "docs:word_sample.docx"
    res = defs.resolve_job_def("ingest_job").execute_in_process(instance=DagsterInstance.get(),
                                                                tags=range_tags(key, key))
    assert res.success
    assert openai_server.count() == calls
    assert rows_by_file(TEXT) == text_ids


@pytest.mark.slow
def test_change_and_delete_touch_only_their_file(mmrag_env, tmp_path, capsys):
    from dagster import DagsterInstance

    from mmrag.config import Settings
    from mmrag.graph.lightrag_adapter import graph_counts
    from mmrag.manifest import Manifest

    root = _small_corpus(tmp_path / "docs")
    code, out = cli_json(capsys, "ingest", str(root), "--source", "docs")
    assert code == 0 and out["indexed"] == 4
    before = rows_by_file(TEXT)
    instance = DagsterInstance.get()
    runs_before = len(instance.get_run_records())

    _write(root, "a.md", "# Alpha\n\nAlpha file now talks about goldeneyes instead.\n")
    code, out = cli_json(capsys, "ingest", str(root), "--source", "docs")
    assert code == 0
    new_runs = instance.get_run_records()[: len(instance.get_run_records()) - runs_before]
    assert len(new_runs) == 1
    tags = new_runs[0].dagster_run.tags
    assert (tags["dagster/asset_partition_range_start"], tags["dagster/asset_partition_range_end"]) == ("docs:a.md",) * 2
    after = rows_by_file(TEXT)
    assert after["docs:a.md"] and not (after["docs:a.md"] & before["docs:a.md"])  # old rows gone, new present
    for k in ("docs:b.md", "docs:c.md", "docs:d.md"):
        assert after[k] == before[k]

    manifest = Manifest(Settings.from_env().state_path)
    shared = set(manifest.graph_refs("docs:b.md", "chunk")) & set(manifest.graph_refs("docs:c.md", "chunk"))
    assert shared, "b.md and c.md share a chunk"
    nodes_before, _ = graph_counts(Settings.from_env().graph_dir)

    (root / "b.md").unlink()
    code, out = cli_json(capsys, "ingest", str(root), "--source", "docs")
    assert code == 0 and out["files"] == 3
    after_delete = rows_by_file(TEXT)
    assert "docs:b.md" not in after_delete
    assert {k: after_delete[k] for k in ("docs:a.md", "docs:c.md", "docs:d.md")} == \
           {k: after[k] for k in ("docs:a.md", "docs:c.md", "docs:d.md")}
    assert "docs:b.md" not in instance.get_dynamic_partitions("source_files")
    assert manifest.get("docs:b.md") is None and manifest.graph_refs("docs:b.md", "chunk") == []
    nodes_after, _ = graph_counts(Settings.from_env().graph_dir)
    assert nodes_after < nodes_before

    # The chunk b.md shared with c.md survives for c.md, in LightRAG's chunk store.
    from mmrag_resources.embedders import TextEmbedderResource
    from mmrag_resources.lightrag import LightRAGResource

    text = TextEmbedderResource().embedder()
    graph = LightRAGResource().store(text, None, manifest)
    for cid in shared:
        rec = graph.run(graph.rag.text_chunks.get_by_id(cid))
        assert rec is not None and "mallards" in rec["content"]
    nodes = graph.run(graph.rag.chunk_entity_relation_graph.get_all_labels())
    assert not any("b.md" in n for n in nodes) and any("c.md" in n for n in nodes)


@pytest.mark.slow
def test_missing_root_changes_nothing(mmrag_env, tmp_path, capsys):
    root = _small_corpus(tmp_path / "docs")
    assert cli_json(capsys, "ingest", str(root), "--source", "docs")[0] == 0
    before = rows_by_file(TEXT)
    root.rename(tmp_path / "unmounted")
    from mmrag.cli import main

    assert main(["ingest", str(root), "--source", "docs"]) == 2
    assert "missing" in capsys.readouterr().err
    assert rows_by_file(TEXT) == before


@pytest.mark.slow
def test_status_reports_rows_outcomes_and_staleness(mmrag_env, tmp_path, capsys, monkeypatch):
    root = _small_corpus(tmp_path / "docs")
    (root / "empty.pdf").write_bytes(b"")
    assert cli_json(capsys, "ingest", str(root), "--source", "docs")[0] == 0
    code, st = cli_json(capsys, "status")
    assert code == 0
    docs = st["sources"]["docs"]
    files = {f["path"]: f for f in docs["files"]}
    assert files["empty.pdf"]["status"] == "skipped" and "empty" in files["empty.pdf"]["reason"]
    assert files["a.md"]["status"] == "indexed" and files["a.md"]["text_rows"] >= 1
    assert docs["text_rows"] == sum(f["text_rows"] for f in docs["files"]) == len(
        [i for ids in rows_by_file(TEXT).values() for i in ids])
    assert docs["stale"] == [] and docs["deleted"] == []
    (root / "d.md").write_text("# Delta\n\nDelta now talks about cormorants.\n")
    (root / "a.md").unlink()
    _, st = cli_json(capsys, "status")
    assert st["sources"]["docs"]["stale"] == ["d.md"] and st["sources"]["docs"]["deleted"] == ["a.md"]
    monkeypatch.setenv("MMRAG_CHUNK_SIZE", "77")  # a config change makes every file stale
    _, st = cli_json(capsys, "status")
    assert set(st["sources"]["docs"]["stale"]) == {"b.md", "c.md", "d.md", "empty.pdf"}


@pytest.mark.slow
def test_vlm_outage_indexes_partially_and_the_next_sync_fills_in(mmrag_env, tmp_path, capsys, openai_server,
                                                                  monkeypatch):
    """The VLM fails: the file is indexed with extractive descriptions, marked partial (a transient
    failure), and redone once its backoff has passed, or at once with --retry-failed."""
    import time

    from openai_server import Fault

    from mmrag.config import Settings
    from mmrag.manifest import Manifest

    openai_server.responder = lightrag_aware
    openai_server.fault_fn = lambda rec: Fault(status=503) if (rec.json or {}).get("model") == "fake-vlm" else None
    for k, v in {"MMRAG_LLM_URL": openai_server.base_url, "MMRAG_LLM_MODEL": "fake-llm",
                 "MMRAG_VLM_MODEL": "fake-vlm", "MMRAG_LLM_RETRIES": "0"}.items():
        monkeypatch.setenv(k, v)
    root = copy_corpus(SAMPLE, tmp_path / "docs", ["powerpoint_with_image.pptx"])
    code, out = cli_json(capsys, "ingest", str(root), "--source", "docs")
    assert code == 0 and out["indexed"] == 1
    rec = Manifest(Settings.from_env().state_path).get("docs:powerpoint_with_image.pptx")
    assert rec.status == "partial" and "extractive after model errors" in rec.reason
    first_rows = rows_by_file(TEXT)

    assert rec.failure_kind == "transient" and rec.attempts == 1 and rec.retry_at > time.time() + 200

    openai_server.fault_fn = None  # the VLM is back
    vlm_before = sum(1 for r in openai_server.chat_requests() if r["model"] == "fake-vlm")
    code, out = cli_json(capsys, "ingest", str(root), "--source", "docs")  # within the backoff: not yet
    assert code == 0 and Manifest(Settings.from_env().state_path).get("docs:powerpoint_with_image.pptx").status == "partial"
    assert sum(1 for r in openai_server.chat_requests() if r["model"] == "fake-vlm") == vlm_before
    code, out = cli_json(capsys, "ingest", str(root), "--source", "docs", "--retry-failed")
    assert code == 0
    rec = Manifest(Settings.from_env().state_path).get("docs:powerpoint_with_image.pptx")
    assert rec.status == "indexed" and rec.failure_kind is None and rec.retry_at is None
    assert sum(1 for r in openai_server.chat_requests() if r["model"] == "fake-vlm") > vlm_before
    assert rows_by_file(TEXT) != first_rows  # the image's row now carries the VLM's description


@pytest.mark.slow
def test_blob_gc_removes_only_what_nothing_refers_to(mmrag_env, tmp_path, capsys):
    """Old versions of changed files and everything of deleted files go; the index keeps working."""
    import os
    import time

    from mmrag.config import Settings

    root = copy_corpus(SAMPLE, tmp_path / "gc", ["example_image_01.png", "docx_grouped_images.docx"])
    _write(root, "a.md", "# Alpha\n\nFirst version about pochards.\n")
    assert cli_json(capsys, "ingest", str(root), "--source", "gc")[0] == 0
    blobs = Settings.from_env().blobs_dir

    def names():
        return {p.name for p in blobs.glob("??/*")}

    first = names()
    _write(root, "a.md", "# Alpha\n\nSecond version about eiders.\n")  # the first version's snapshot is orphaned
    (root / "docx_grouped_images.docx").unlink()  # its snapshot and its pictures are orphaned
    code, out = cli_json(capsys, "ingest", str(root), "--source", "gc")
    assert code == 0 and out["deleted"] == 1
    before = names()
    assert before >= first

    code, res = cli_json(capsys, "gc", "--grace-s", "3600")  # all blobs are fresh: nothing goes yet
    assert code == 0 and res["removed"] == 0 and res["kept"] == len(before)
    old = time.time() - 7200
    for p in blobs.glob("??/*"):
        os.utime(p, (old, old))
    code, dry = cli_json(capsys, "gc", "--dry-run")
    assert code == 0 and dry["removed"] >= 3 and names() == before  # a.md v1, the docx, its pictures
    code, res = cli_json(capsys, "gc")
    assert res["removed"] == dry["removed"] and res["freed_bytes"] > 0
    after = names()
    assert len(after) == len(before) - res["removed"]

    # Everything the index points to is still there, and a no-change sync still has nothing to do.
    code, q = cli_json(capsys, "query", "pochards or eiders", "--top-k", "3")
    assert q["hits"] and all(os.path.exists(h["image_path"]) for h in q["hits"] if h.get("image_path"))
    code, again = cli_json(capsys, "ingest", str(root), "--source", "gc")
    assert code == 0 and again["indexed"] == 2 and names() == after
    code, _ = cli_json(capsys, "gc", "--grace-s", "0")
    assert names() == after  # what is left is all referenced


def test_the_same_picture_in_two_files_is_described_once(mmrag_env, tmp_path, capsys, openai_server, monkeypatch):
    """Descriptions are content-addressed: two files holding the same picture (here two copies of one
    image, in one run) cause one vision request, and both files get the description."""
    import shutil

    from openai_server import image_parts

    openai_server.responder = lightrag_aware
    for var, value in {"MMRAG_LLM_URL": openai_server.base_url, "MMRAG_LLM_MODEL": "fake-llm",
                       "MMRAG_VLM_MODEL": "fake-vlm", "MMRAG_LLM_RETRIES": "0"}.items():
        monkeypatch.setenv(var, value)
    root = tmp_path / "docs"
    root.mkdir()
    shutil.copy(SAMPLE / "example_image_01.png", root / "chart.png")
    shutil.copy(SAMPLE / "example_image_01.png", root / "chart_copy.png")
    code, out = cli_json(capsys, "ingest", str(root), "--source", "docs")
    assert code == 0 and out["indexed"] == 2, out
    vision = [r for r in openai_server.chat_requests() if image_parts(r)]
    assert len(vision) == 1, [r["model"] for r in vision]
    assert set(rows_by_file(IMAGE)) == {"docs:chart.png", "docs:chart_copy.png"}
