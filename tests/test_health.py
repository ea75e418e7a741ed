"""The health board and probes of `mmrag up` without `up` (mmrag.serve.health): state changes said once,
failures and restarts counted, a probe that hangs counted broken after its deadline while the others
go on, the start-up grace and what no grace excuses, a stale board read as unknown, and the runs probe
on a real Dagster instance (a run that failed at launch, then one that started)."""

from __future__ import annotations

import shutil
import threading
import time

import pytest
from conftest import REPO

from mmrag.serve import health


@pytest.fixture
def board(tmp_path):
    said: list[str] = []
    b = health.HealthBoard(tmp_path, ["embed", "parse", "runs"], said.append, logs={"parse": tmp_path / "parse.log"})
    b.said = said
    return b


def test_the_board_says_each_change_once_and_counts_failures(board, tmp_path):
    board.set("parse", "ok")
    board.set("parse", "ok")
    board.set("parse", "broken", "the parse service did not answer a ping within 10 s")
    board.set("parse", "broken", "the parse service did not answer a ping within 10 s")
    assert board.said == [f"mmrag up: parse is BROKEN: the parse service did not answer a ping within 10 s "
                          f"(log: {tmp_path / 'parse.log'})"]
    board.set("parse", "ok")
    assert board.said[-1] == "mmrag up: parse works again"
    board.set("embed", "restarting", "exited with signal 9")
    board.set("embed", "ok")
    got = health.read(tmp_path)
    assert got["status"] == "starting"  # runs has not been probed yet
    assert got["parts"]["parse"]["failures"] == 1 and got["parts"]["embed"]["restarts"] == 1
    board.set("runs", "ok")
    assert health.read(tmp_path)["status"] == "ok"
    board.set("runs", "broken", "run 1234abcd failed at launch: no module named x")
    assert health.read(tmp_path)["status"] == "degraded"


def test_a_stale_board_is_unknown_not_ok(board, tmp_path):
    for name in ("embed", "parse", "runs"):
        board.set(name, "ok")
    assert health.read(tmp_path)["status"] == "ok"
    assert health.read(tmp_path, max_age_s=-1)["status"] == "unknown"  # `up` lives, its probes are stuck


def test_a_hanging_probe_is_broken_after_its_deadline_and_holds_up_no_other(board, monkeypatch):
    monkeypatch.setattr(health, "PROBE_TIMEOUT_S", 0.5)
    release = threading.Event()
    calls = {"embed": 0}

    def hangs():
        release.wait(30)
        return True, ""

    def answers():
        calls["embed"] += 1
        return True, ""

    monitor = health.HealthMonitor(board, {"parse": hangs, "embed": answers}, alive=lambda n: True,
                                   started_at=lambda n: 0.0, grace_s=0)
    t0 = time.monotonic()
    monitor.check_once()
    monitor.check_once()  # the first probe still hangs: not asked again, still broken
    assert time.monotonic() - t0 < 3
    assert board.parts["parse"].state == "broken" and "did not answer" in board.parts["parse"].reason
    assert board.parts["embed"].state == "ok" and calls["embed"] == 2
    release.set()
    time.sleep(0.2)
    monitor.check_once()
    assert board.parts["parse"].state == "ok"


def test_the_start_up_grace_excuses_slowness_but_not_a_definite_failure(board):
    def loading():
        return False, "code location still loading"

    def failed():
        raise health.Broken("code location mmrag failed to load: RuntimeError: boom")

    monitor = health.HealthMonitor(board, {"embed": loading, "parse": failed}, alive=lambda n: True,
                                   started_at=lambda n: time.time(), grace_s=60)
    monitor.check_once()
    assert board.parts["embed"].state == "starting"
    assert board.parts["parse"].state == "broken" and "failed to load" in board.parts["parse"].reason


def test_the_runs_probe_names_a_run_that_failed_at_launch(tmp_path):
    from dagster import DagsterInstance, DagsterRunStatus
    from dagster._core.test_utils import create_run_for_test

    from mmrag.orchestration.runs import owner_tags

    home = tmp_path / "dagster"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    probe = health.runs_probe(home)
    assert probe() == (True, "")
    with DagsterInstance.from_config(str(home)) as instance:
        run = create_run_for_test(instance, job_name="ingest_job", status=DagsterRunStatus.STARTING)
        instance.report_run_failed(run, message="the run worker could not load the code location")
        works, why = probe()
        assert not works and run.run_id[:8] in why and "failed at launch" in why, why
        create_run_for_test(instance, job_name="ingest_job", status=DagsterRunStatus.SUCCESS, tags=owner_tags())
        assert probe() == (True, "")
