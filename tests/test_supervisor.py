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


def test_clients_stop_before_what_they_talk_to(tmp_path):
    """`up`'s stop goes tier by tier: the query API (tier 3) finishes while Milvus (tier 0) still runs."""
    pidfile, seen = tmp_path / "backend.pid", tmp_path / "seen"
    backend = Child("backend", [sys.executable, "-c", f"import os,time; open({str(pidfile)!r},'w').write(str(os.getpid())); "
                                                      "time.sleep(600)"])
    front = Child("front", [sys.executable, "-c", f"""
import os, signal, sys, time
def bye(*_):
    time.sleep(0.5)  # in-flight requests finish
    try:
        os.kill(int(open({str(pidfile)!r}).read()), 0)
        alive = "alive"
    except OSError:
        alive = "gone"
    open({str(seen)!r}, "w").write(alive)
    sys.exit(0)
signal.signal(signal.SIGTERM, bye)
time.sleep(600)
"""], tier=3)
    sup = Supervisor([backend, front], env={}, log_dir=tmp_path / "logs", say=lambda s: None)
    sup.start_all()
    deadline = time.monotonic() + 30
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1)  # the front has set its handler
    sup.stop_all()
    assert seen.read_text() == "alive"
    assert backend.proc.poll() is not None and front.proc.poll() == 0
    assert not sup.killed


def test_a_command_started_with_sigint_ignored_still_stops_on_sigterm():
    """A script's `mmrag ingest DIR &` (no job control) starts it with SIGINT ignored; Dagster maps SIGTERM
    onto SIGINT's handler around every job it runs, which left SIGTERM ignored for the rest of the command
    (and for every process it started). The CLI gives an ignored SIGINT its default handler back first."""
    import subprocess

    probe = ("import signal; signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
             "import sys; from mmrag.cli.main import stoppable_by_signals\n"
             "if sys.argv[1] == 'cli': stoppable_by_signals()\n"
             "from dagster._utils.interrupts import capture_interrupts\n"
             "with capture_interrupts(): pass\n"
             "print(signal.getsignal(signal.SIGTERM) is signal.SIG_IGN)")
    ignored = {how: subprocess.run([sys.executable, "-c", probe, how], capture_output=True, text=True, timeout=120)
               for how in ("bare", "cli")}
    assert ignored["bare"].stdout.strip() == "True", ignored["bare"].stderr[-2000:]  # the hazard, as Dagster has it
    assert ignored["cli"].stdout.strip() == "False", ignored["cli"].stderr[-2000:]
