"""The Dagster instance stays bounded: superseded old runs are purged, every file keeps its latest
materialization of each stage; a multi-file run's per-file table is not copied into every partition."""

from __future__ import annotations

import pytest
from helpers import cli_json, two_notes

STAGES = ("raw_files", "parsed_blocks", "modal_descriptions", "embeddings", "milvus_partitions", "lightrag_graph")


def _latest_runs(instance, keys) -> dict[str, str]:
    """{partition: run id of its latest lightrag_graph materialization}, and every stage has one."""
    from dagster import AssetKey, AssetRecordsFilter

    out = {}
    for stage in STAGES:
        for key in keys:
            recs = instance.fetch_materializations(
                AssetRecordsFilter(asset_key=AssetKey(stage), asset_partitions=[key]), limit=1).records
            assert recs, f"{stage} of {key} has no materialization left"
            out[key] = recs[0].run_id
    return out


@pytest.mark.slow
def test_superseded_runs_are_purged_and_each_file_keeps_its_latest(mmrag_env, tmp_path, capsys, monkeypatch):
    from dagster import AssetKey, AssetRecordsFilter, DagsterInstance

    from mmrag.orchestration.retention import purge_runs

    root = two_notes(tmp_path)
    keys = ["docs:a.md", "docs:b.md"]
    assert cli_json(capsys, "ingest", str(root))[0] == 0  # run 1: a and b
    with DagsterInstance.get() as instance:
        meta = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey("embeddings"), asset_partitions=["docs:a.md"]), limit=1
        ).records[0].asset_materialization.metadata
        assert "per_file" not in meta and meta["files"].value == 2  # counts only: the table went to the log
    (root / "a.md").write_text("# Alpha\n\nMallards dabble in shallow ponds.\n")
    assert cli_json(capsys, "ingest", str(root))[0] == 0  # run 2: a
    with DagsterInstance.get() as instance:
        first = _latest_runs(instance, keys)
        assert first["docs:a.md"] != first["docs:b.md"]
        runs_before = len(instance.get_runs())
        # run 1 still holds b's latest materializations: nothing goes
        assert purge_runs(instance, 0)["purged"] == 0 and len(instance.get_runs()) == runs_before
    (root / "b.md").write_text("# Beta\n\nThe peregrine falcon dives very fast.\n")
    (root / "c.md").write_text("# Gamma\n\nContainer ships.\n")
    assert cli_json(capsys, "ingest", str(root))[0] == 0  # run 3: b and c
    with DagsterInstance.get() as instance:
        kept = _latest_runs(instance, [*keys, "docs:c.md"])
        old = {r.run_id for r in instance.get_runs()} - set(kept.values())
        assert old, "run 1 is superseded now"
        # not old enough yet: nothing goes
        assert purge_runs(instance, 3600)["purged"] == 0
    monkeypatch.setenv("MMRAG_RUN_RETENTION_DAYS", "0.000001")
    code, res = cli_json(capsys, "gc", "--runs")
    assert code == 0 and res["runs"]["purged"] == len(old)
    with DagsterInstance.get() as instance:
        left = {r.run_id for r in instance.get_runs()}
        assert left == set(kept.values())
        assert _latest_runs(instance, [*keys, "docs:c.md"]) == kept  # every file keeps its latest of each stage
