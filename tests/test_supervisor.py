"""`mmrag up`'s supervisor: a child that exits is started again, at most RESTARTS times within
RESTART_WINDOW_S; a child that crashes now and then over a long life is restarted every time."""

from __future__ import annotations

import sys
import time

from mmrag.serve import supervisor
from mmrag.serve.supervisor import Child, Supervisor


def _crashing(tmp_path) -> tuple[Supervisor, Child, list[str]]:
    said: list[str] = []
    child = Child("crashy", [sys.executable, "-c", "raise SystemExit(3)"])
    sup = Supervisor([child], env={}, log_dir=tmp_path / "logs", say=said.append)
    sup.start(child)
    child.proc.wait(30)
    return sup, child, said


def test_a_child_crashing_in_a_loop_stops_up(tmp_path):
    sup, child, said = _crashing(tmp_path)
    for _ in range(supervisor.RESTARTS):
        assert sup.check() is True
        child.proc.wait(30)
    assert sup.check() is False
    assert child.restarts == supervisor.RESTARTS
    assert any(f"failed {supervisor.RESTARTS + 1} times within" in s for s in said), said
    assert said[0].startswith("mmrag up: crashy exited with exit code 3"), said


def test_crashes_spread_over_time_are_each_restarted(tmp_path, monkeypatch):
    monkeypatch.setattr(supervisor, "RESTART_WINDOW_S", 0.5)
    sup, child, said = _crashing(tmp_path)
    for _ in range(3 * supervisor.RESTARTS):
        time.sleep(0.6)  # each crash comes after the window of the earlier ones
        assert sup.check() is True, said[-2:]
        child.proc.wait(30)
    assert child.restarts == 3 * supervisor.RESTARTS
    assert len(child.restarted) == 1
