"""Commands started at the same moment on a new data dir: the Dagster instance's storage is created
once (`mmrag.orchestration.instance.prepare_storage`), a Milvus Lite data dir is taken in turn
(`mmrag.index.lite_lock`: the second ingest waits, then plans on what the first indexed), and
collections made by two processes at once are made once. Every process succeeds and every file is
indexed, on the embedded default and with a Milvus server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from helpers import folder, milvus_lite_server, open_instance_together


def _env(home: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMRAG_") and k != "DAGSTER_HOME"}
    env.update(MMRAG_HOME=str(home), MMRAG_CLIP_PRETRAINED="random", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), **extra)
    return env


def test_a_new_instance_opened_by_several_processes_at_once(tmp_path):
    """Four processes open the same new DAGSTER_HOME at the same moment (what `mmrag up` does with the
    daemon and the webserver, and two ingests on a new data dir): all succeed, the storage is made once.
    (Without `prepare_storage`, 3 rounds of this each lost 1 to 3 of the 4 processes, 2026-12-07.)"""
    from dagster import DagsterInstance

    home = tmp_path / "home"
    results = open_instance_together(tmp_path / "go", [home] * 4)
    for r in results:
        assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]
    assert (home / "dagster" / ".mmrag-storage-ready").exists()
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        assert len(instance.get_dynamic_partitions("source_files")) == 4


def _ingest(root: Path, home: Path, **extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mmrag.cli", "ingest", str(root), "--json"], env=_env(home, **extra),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _notes(tmp_path: Path, n: int, per: int = 2) -> list[Path]:
    birds = ["Mallards dabble", "Falcons dive", "Herons stalk frogs", "Swans hiss", "Grebes build nests"]
    return [folder(tmp_path / f"f{i}", {f"n{j}.md": f"# Note {i}.{j}\n\n{birds[(i + j) % len(birds)]} in place {i}-{j}.\n"
                                        for j in range(per)}) for i in range(n)]


def _all_indexed(procs: list[subprocess.Popen], folders: list[Path], home: Path, extra: dict, again: bool = True) -> list[str]:
    """Each ingest succeeded and indexed its folder; `again`: one more ingest changes nothing. Their stderr."""
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr[-3000:]
        outs.append((json.loads(stdout), stderr))
    for (res, _), root in zip(outs, folders):
        assert res["indexed"] == len(list(root.iterdir())) and not res["failed"], res
    # the index holds every file's rows, each once (one more ingest changes nothing)
    text_rows = max(res["text_rows"] for res, _ in outs)
    assert text_rows == sum(len(list(r.iterdir())) for r in folders)
    if not again:
        return [err for _, err in outs]
    again = subprocess.run([sys.executable, "-m", "mmrag.cli", "ingest", str(folders[0]), "--json"], env=_env(home, **extra),
                           cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    res = json.loads(again.stdout)
    assert res["text_rows"] == text_rows and res["indexed"] == len(list(folders[0].iterdir())), res
    return [err for _, err in outs]


@pytest.mark.slow
def test_concurrent_ingests_on_the_embedded_default_wait_their_turn(tmp_path):
    """Three `mmrag ingest` of three folders started together on a new data dir (Milvus Lite): one
    indexes while the others wait, saying for whom; all three succeed."""
    folders = _notes(tmp_path, 3)
    home = tmp_path / "home"
    procs = [_ingest(root, home) for root in folders]
    said = _all_indexed(procs, folders, home, {})
    assert sum("waiting for the Milvus Lite index" in err and "mmrag ingest" in err for err in said) >= 1, said


@pytest.fixture
def milvus_server(tmp_path):
    with milvus_lite_server(tmp_path) as uri:
        yield uri


@pytest.mark.slow
def test_concurrent_ingests_with_a_milvus_server_write_at_once(tmp_path, milvus_server):
    """Two ingests at once against a Milvus server on a new data dir: both create the collections
    (one creates, the other uses them) and both index every file."""
    folders = _notes(tmp_path, 2)
    home = tmp_path / "home"
    extra = {"MMRAG_MILVUS_URI": milvus_server}
    procs = [_ingest(root, home, **extra) for root in folders]
    _all_indexed(procs, folders, home, extra, again=False)
