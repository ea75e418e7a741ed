"""The index audit on a real index: a clean index checks clean; planted faults (a Milvus row deleted,
an orphan row, a duplicate of another version, a graph node gone, a blob deleted, a stale and an orphan stage output)
are each named by `mmrag check`, `--repair` fixes them, and the index then equals a clean one."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
from conftest import SAMPLE
from helpers import IMAGE, TEXT, cli_json, rows_by_file, store, two_notes


def _found(res: dict) -> set[tuple[str, str, str]]:
    return {(d["kind"], d["part"], d["key"]) for d in res["differences"]}


@pytest.mark.slow
def test_check_names_planted_faults_and_repair_restores_the_index(mmrag_env, tmp_path, capsys):
    import networkx as nx

    from mmrag.config import Settings
    from mmrag.index.milvus_store import Row
    from mmrag.index.stage_files import stage_file
    from mmrag.manifest import Manifest
    from mmrag.models import factory

    root = tmp_path / "docs"
    root.mkdir()
    for name, text in (("a.md", "# Alpha\n\nMallards dabble in ponds. See Figure 1.\n"),
                       ("b.md", "# Beta\n\nThe peregrine falcon dives fast.\n\n## More\n\nIt nests on cliffs.\n"),
                       ("c.md", "# Gamma\n\nContainer ships cross the Pacific.\n")):
        (root / name).write_text(text)
    shutil.copy(SAMPLE / "example_image_01.png", root / "pic.png")
    code, _ = cli_json(capsys, "ingest", str(root))
    assert code == 0
    clean_text, clean_image = rows_by_file(TEXT), rows_by_file(IMAGE)
    assert clean_image.get("docs:pic.png"), "CLIP (random weights) gives the picture an image row"

    code, res = cli_json(capsys, "check")
    assert code == 0 and res["before"]["clean"], res["before"]["differences"]
    counts = res["before"]["counts"]
    assert counts["files"] == 4 and counts["milvus_rows"] >= 5 and counts["graph_nodes"] > 0
    assert set(res["before"]["seconds"]) >= {"folders", "milvus", "graph", "blobs", "stage outputs"}

    # -- plant the faults ---------------------------------------------------------------------------
    s = Settings.from_env()
    st = store()
    text = st.collection(TEXT)
    victim = sorted(clean_text["docs:a.md"])[0]
    full = st.client.query(text, filter=f'id == "{victim}"', output_fields=["*"])[0]
    st.client.delete(text, ids=[victim])  # a row missing
    ghost = Row("ghost-row-1", "docs:ghost.md", "docs", "text", "a ghost", list(full["vector"]))
    st.replace_file(TEXT, "docs:ghost.md", [ghost])  # an orphan row
    twin = sorted(clean_text["docs:c.md"])[0]
    row = st.client.query(text, filter=f'id == "{twin}"', output_fields=["*"])[0]
    st.client.insert(text, [{k: v for k, v in row.items() if k != "sparse"} | {"id": "old-version-1"}])  # a duplicate
    st.flush()

    manifest = Manifest(s.state_path)
    node = sorted(manifest.graph_refs("docs:b.md", "entity"))[0]
    factory.close_graph_stores()
    graphml = next(s.graph_dir.glob("*/graph_chunk_entity_relation.graphml"))
    g = nx.read_graphml(graphml)
    g.remove_node(node)  # a graph reference that no longer resolves
    nx.write_graphml(g, graphml)

    image_path = next(iter(st.client.query(st.collection(IMAGE), filter='file_key == "docs:pic.png"',
                                           output_fields=["image_path"])))["image_path"]
    Path(image_path).unlink()  # a blob gone

    raw_c = stage_file(s.home, "raw_files", "docs:c.md")
    raw = pickle.loads(raw_c.read_bytes())
    raw.content_hash = "0" * 64
    raw_c.write_bytes(pickle.dumps(raw))  # a stage output of another version
    stray = stage_file(s.home, "embeddings", "docs:long-gone.md")
    shutil.copy(stage_file(s.home, "embeddings", "docs:a.md"), stray)  # a stage output of no file

    # -- the audit names each -----------------------------------------------------------------------
    code, res = cli_json(capsys, "check")
    assert code == 1 and not res["before"]["clean"]
    found = _found(res["before"])
    expected = {("missing", "milvus", "docs:a.md"), ("orphaned", "milvus", "docs:ghost.md"),
                ("stale", "milvus", "docs:c.md"), ("missing", "graph", "docs:b.md"),
                ("missing", "blobs", "docs:pic.png"), ("stale", "stages", "docs:c.md"),
                ("orphaned", "stages", f"embeddings/{stray.name}")}
    assert expected <= found, found
    assert found - expected == set(), f"only the planted faults are named: {found - expected}"
    detail = {(d["kind"], d["part"], d["key"]): d for d in res["before"]["differences"]}
    assert "1 of" in detail[("missing", "milvus", "docs:a.md")]["detail"]
    assert detail[("missing", "graph", "docs:b.md")]["detail"].startswith("its references do not resolve: 1 entity")
    # The same audit as an asset (audit_job): the differences in its metadata, its check failed.
    from dagster import DagsterInstance

    from mmrag.definitions import defs

    with DagsterInstance.get() as instance:
        result = defs.resolve_job_def("audit_job").execute_in_process(instance=instance)
    meta = result.asset_materializations_for_node("index_audit")[0].metadata
    [check] = result.get_asset_check_evaluations()
    assert not check.passed and meta["differences"].value == len(found)
    assert "`docs:ghost.md`" in meta["table"].value and meta["milvus_rows"].value >= 5
    # --source limits the audit to a source's files: another source is never read
    code, res = cli_json(capsys, "check", "--source", "nope")
    assert code == 1 and _found(res["before"]) == {("missing", "folder", "nope")}

    # -- the repair fixes them, and a second check is clean ------------------------------------------
    code, res = cli_json(capsys, "check", "--repair")
    assert code == 0, res.get("after", {}).get("differences")
    done = res["repair"]
    assert done["milvus_rows_deleted"] == 1 and done["stage_outputs_deleted"] == 1
    assert done["files_requested"] == 4  # a, b, c and pic: each part of theirs is written again
    assert done["sources_synced"] == ["docs"]
    assert res["after"]["clean"], res["after"]["differences"]
    code, res = cli_json(capsys, "check")
    assert code == 0 and res["before"]["clean"]
    assert rows_by_file(TEXT) == clean_text and rows_by_file(IMAGE) == clean_image
    assert Path(image_path).exists() and not stray.exists()
    factory.close_graph_stores()


@pytest.mark.slow
def test_asset_checks_are_recorded_per_file_and_a_planted_stale_row_fails_one(mmrag_env, tmp_path, capsys, monkeypatch):
    from dagster import AssetCheckKey, AssetKey, DagsterInstance

    from mmrag.config import Settings
    from mmrag.manifest import Manifest

    root = two_notes(tmp_path)
    monkeypatch.setenv("MMRAG_PLANT", "milvus-stale-row:docs:a.md")
    code, out = cli_json(capsys, "ingest", str(root))
    assert code == 1 and out["indexed"] == 1
    rec = Manifest(Settings.from_env().state_path).get("docs:a.md")
    assert rec.status == "failed" and rec.failure_kind == "transient"
    assert rec.reason.startswith("milvus check: 1 text rows of another version")

    def latest() -> dict[str, tuple[str, str, str]]:
        """{check: {partition: status}} of the newest evaluations."""
        out = {}
        with DagsterInstance.get() as instance:
            for asset, name in (("milvus_partitions", "rows_match_stage_output"), ("lightrag_graph", "graph_refs_resolve")):
                hist = instance.event_log_storage.get_asset_check_execution_history(
                    AssetCheckKey(AssetKey(asset), name), limit=20)
                seen = out.setdefault(name, {})
                for r in hist:  # newest first
                    seen.setdefault(r.partition, r.status.value)
        return out

    first = latest()
    assert first["rows_match_stage_output"] == {"docs:a.md": "FAILED", "docs:b.md": "SUCCEEDED"}
    # a.md never reached the graph step: only b.md's graph references were checked
    assert first["graph_refs_resolve"].get("docs:b.md") == "SUCCEEDED"
    assert first["graph_refs_resolve"].get("docs:a.md") != "SUCCEEDED"

    monkeypatch.delenv("MMRAG_PLANT")
    code, out = cli_json(capsys, "ingest", str(root), "--retry-failed")
    assert code == 0 and out["indexed"] == 2  # the stage's own replace removed the stale row
    again = latest()
    assert again["rows_match_stage_output"]["docs:a.md"] == "SUCCEEDED"
    assert again["graph_refs_resolve"]["docs:a.md"] == "SUCCEEDED"
    code, res = cli_json(capsys, "check")
    assert code == 0 and res["before"]["clean"], res["before"]["differences"]
