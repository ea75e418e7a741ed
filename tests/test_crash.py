"""Kill `mmrag ingest` at every step where a crash can land, run it again, and compare the whole
index with a clean run's: Milvus rows of every collection, LightRAG's graph and KV stores, the
manifest, the stage outputs. Real parts: a child process killed with SIGKILL, Milvus Lite,
LightRAG on disk, a Dagster instance, the loopback model server."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import run_cli
from crash_tools import (
    dangling,
    diff,
    env_for,
    index_state,
    ingest_subprocess,
    new_home,
)
from openai_server import FakeOpenAIServer, lightrag_aware
from PIL import Image, ImageDraw

pytestmark = pytest.mark.slow  # the fast loop: pytest -m "not slow"

SHARED = "Every survey in this folder counts Mallards and Teals along the Northern Marsh."
# The clean-up job runs first: its graph commit is the first "graph-persisted"/"graph-committed"
# point; ":2" kills at the second, in the ingest run's commit.
POINTS = ["cleanup", "parse", "describe", "milvus", "graph", "graph-persisted", "graph-persisted:2",
          "graph-committed:2"]


def _corpus_v0(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "a.md").write_text(f"# Alpha Survey\n\nAlpha counts Pochards diving near Heron Point.\n\n"
                               f"# Shared\n\n{SHARED}\n")
    (root / "b.md").write_text("# Bravo Survey\n\nBravo lists Eiders and Scoters off Gull Island.\n\n"
                               "| species | count |\n|---|---|\n| Eider | 41 |\n| Scoter | 7 |\n")
    (root / "d.txt").write_text(f"Delta notes.\n\n{SHARED}\n")
    im = Image.new("RGB", (360, 120), "white")
    ImageDraw.Draw(im).text((10, 40), "Heron Point tally sheet", fill="black")
    im.save(root / "c.png")
    return root


def _corpus_v1(root: Path) -> None:
    """What changes between the two ingests: an edit, a new file, a deletion."""
    (root / "a.md").write_text(f"# Alpha Survey\n\nAlpha now counts Goldeneyes diving near Heron Point.\n\n"
                               f"# Shared\n\n{SHARED}\n")
    (root / "e.md").write_text("# Echo Survey\n\nEcho watches Grebes on the Northern Marsh.\n")
    (root / "d.txt").unlink()


@pytest.fixture(scope="module")
def llm():
    with FakeOpenAIServer() as server:
        server.responder = lightrag_aware
        yield server


@pytest.fixture(scope="module")
def world(tmp_path_factory, llm):
    """A data dir holding a clean ingest of version 0, and a clean ingest of version 1 on a copy."""
    base = tmp_path_factory.mktemp("crash")
    root0 = _corpus_v0(base / "docs0")
    home0 = new_home(base / "home0")
    llm_env = {"MMRAG_LLM_URL": llm.base_url, "MMRAG_LLM_MODEL": "fake-llm", "MMRAG_VLM_MODEL": "fake-vlm",
               "MMRAG_LLM_RETRIES": "0"}
    res = ingest_subprocess(home0, root0, **llm_env)
    assert res.returncode == 0, res.stderr[-2000:]
    clean = _copy_world(base, home0, root0, "clean")
    with _env(clean["home"], llm_env):
        code, out = run_cli("ingest", str(clean["root"]), "--source", "docs")
        assert code == 0, out
        state = index_state(clean["home"])
        _close()
    assert out["indexed"] == 4 and out["deleted"] == 1
    return {"base": base, "home0": home0, "root0": root0, "llm_env": llm_env, "clean": state}


def _copy_world(base: Path, home0: Path, root0: Path, name: str) -> dict:
    home, root = base / f"home-{name}", base / f"docs-{name}"
    shutil.copytree(home0, home, symlinks=True)
    shutil.copytree(root0, root)
    _corpus_v1(root)
    return {"home": home, "root": root}


@contextlib.contextmanager
def _env(home: Path, extra: dict):
    """This process's environment pointed at `home` (as the child processes see it)."""
    with pytest.MonkeyPatch.context() as mp:
        for var in [v for v in os.environ if v.startswith("MMRAG_")]:
            mp.delenv(var)
        for k, v in env_for(home, **extra).items():
            if k.startswith("MMRAG_") or k == "DAGSTER_HOME":
                mp.setenv(k, v)
        yield


def _close():
    from mmrag_resources.lightrag import close_stores

    close_stores()


@pytest.mark.parametrize("point", POINTS)
def test_killed_ingest_then_rerun_equals_a_clean_run(world, point, llm):
    w = _copy_world(world["base"], world["home0"], world["root0"], point.replace(":", "-"))
    crashed = ingest_subprocess(w["home"], w["root"], MMRAG_CRASH_AT=point, **world["llm_env"])
    assert crashed.returncode == -9, f"the kill point {point} was not reached:\n{crashed.stderr[-3000:]}"
    assert f"MMRAG_CRASH_AT={point}" in crashed.stderr

    with _env(w["home"], world["llm_env"]):
        t0 = time.monotonic()
        code, out = run_cli("ingest", str(w["root"]), "--source", "docs")
        took = time.monotonic() - t0
        assert code == 0, out
        state = index_state(w["home"])
        from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

        instance = DagsterInstance.get()
        stuck = instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.STARTED, DagsterRunStatus.STARTING]))
        held = instance.event_log_storage.get_concurrency_info("mmrag_index").active_run_ids
        _close()
    assert took < 240, f"the re-run after a kill at {point} took {took:.0f} s"
    assert not stuck and not held, "the killed run was not marked failed, or its pool slot not freed"
    assert not (problems := dangling(state)), problems
    assert not (d := diff(world["clean"], state)), f"kill at {point}: the index differs from a clean run's:\n" + "\n".join(d)
