"""`mmrag up`: every part of the service in one foreground command, on loopback by default.

Children, started in this order and stopped in the reverse one:
1. the Milvus server: Milvus Lite's own gRPC server (`milvus-lite server`) on the data dir that the
   embedded default uses, so the index ingested by `mmrag ingest` is the one served; skipped when
   MMRAG_MILVUS_URI names a server. Every other child talks to it over gRPC: many processes, one index.
2. the embedding service (`mmrag embed-server`, `mmrag.serve.embeddings`): the text model and CLIP, warm,
   for every other child (MMRAG_EMBED_SERVICE_URL); skipped with `--no-embed-service`; and the parse
   service (`mmrag parse-server`, `mmrag.parsing.service`): supervised parse workers that outlive runs;
   skipped with `--no-parse-service`;
3. `dagster-daemon` (the `watch_folders` sensor and the `reindex_schedule` run, MMRAG_AUTOMATION=on;
   the sensor ticks every MMRAG_SENSOR_INTERVAL_S) and `dagster-webserver`, on the project's workspace
   and the CLI's DAGSTER_HOME;
4. the query API (`mmrag api`) and the chat page (`mmrag ui`).

A child that exits is reported with its exit status and the last lines of its log
($MMRAG_HOME/logs/<name>.log) and started again, at most `RESTARTS` times within `RESTART_WINDOW_S`
(a part that crashes now and then over weeks is restarted each time; one that crashes in a loop is
not); then `up` stops everything and exits 1. SIGINT (Ctrl-C) or SIGTERM stops the children (SIGTERM, then SIGKILL after a grace
period) and leaves none running. While it runs it prints one status line whenever the manifest's
counts change.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

RESTARTS = 3
RESTART_WINDOW_S = 600.0
STOP_GRACE_S = 15.0


@dataclass
class Child:
    name: str
    cmd: list[str]
    ready_port: int | None = None  # accepting connections here = started
    listens: str = ""  # what to print
    proc: subprocess.Popen | None = None
    restarts: int = 0  # since `up` started
    restarted: list[float] = field(default_factory=list)  # time.monotonic() of the restarts in the window
    log: Path | None = None
    extra_env: dict = field(default_factory=dict)
    started_at: float = 0.0  # time.time() of its latest start
    tier: int = 0  # stopped after every child of a higher tier (its clients) has stopped


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Supervisor:
    def __init__(self, children: list[Child], env: dict, log_dir: Path, say: Callable[[str], None] = print,
                 board=None):
        self.children, self.env, self.log_dir, self.say = children, env, log_dir, say
        self.board = board  # mmrag.serve.health.HealthBoard: each part's state, when `up` keeps one
        self.on_started: dict[str, Callable[[Child], None]] = {}  # child name -> called once it is up
        self.killed: list[str] = []  # children that needed SIGKILL to stop
        self._stopping = False
        self._t0 = time.time()

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self, child: Child, wait_s: float = 180.0) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        child.log = self.log_dir / f"{child.name}.log"
        out = open(child.log, "ab")
        child.started_at = time.time()
        if self.board is not None and self.board.parts.get(child.name) and self.board.parts[child.name].state != "restarting":
            self.board.set(child.name, "starting")
        child.proc = subprocess.Popen(child.cmd, env={**self.env, **child.extra_env}, stdout=out,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()
        if child.ready_port is None:
            self._started(child)
            return
        deadline = time.monotonic() + wait_s
        while not port_open(child.ready_port):
            if child.proc.poll() is not None:
                raise RuntimeError(f"{child.name} exited with {_status(child.proc.returncode)} while starting:\n"
                                   f"{_tail(child.log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{child.name} did not listen on port {child.ready_port} within {wait_s:.0f} s:\n"
                                   f"{_tail(child.log)}")
            time.sleep(0.3)
        self._started(child)

    def _started(self, child: Child) -> None:
        if hook := self.on_started.get(child.name):
            hook(child)

    def start_all(self) -> None:
        for child in self.children:
            self.start(child)
            if child.listens:
                self.say(f"  {child.name:10s} {child.listens}")

    def check(self) -> bool:
        """Restart children that exited (bounded); False when one exhausted its restarts."""
        for child in self.children:
            if self._stopping or child.proc is None or child.proc.poll() is None:
                continue
            code = child.proc.returncode
            self.say(f"mmrag up: {child.name} exited with {_status(code)}; last lines of {child.log}:\n{_tail(child.log)}")
            now = time.monotonic()
            child.restarted = [t for t in child.restarted if now - t < RESTART_WINDOW_S]
            if len(child.restarted) >= RESTARTS:
                minutes = RESTART_WINDOW_S / 60
                self.say(f"mmrag up: {child.name} failed {RESTARTS + 1} times within {minutes:.0f} min: stopping")
                self._mark(child.name, "stopped", f"exited with {_status(code)} {RESTARTS + 1} times in {minutes:.0f} min")
                return False
            self._mark(child.name, "restarting", f"exited with {_status(code)}")
            child.restarts += 1
            child.restarted.append(now)
            self.say(f"mmrag up: restarting {child.name} ({len(child.restarted)}/{RESTARTS} in "
                     f"{RESTART_WINDOW_S / 60:.0f} min, {child.restarts} since start)")
            try:
                self.start(child)
            except RuntimeError as e:
                self.say(f"mmrag up: {e}")
        return True

    def _mark(self, name: str, state: str, reason: str = "") -> None:
        if self.board is not None:
            self.board.set(name, state, reason)

    def alive(self, name: str) -> bool:
        """Whether the part `name` is a live child (a part that is no child, like `runs`, counts as alive)."""
        child = next((c for c in self.children if c.name == name), None)
        return child is None or (child.proc is not None and child.proc.poll() is None and not self._stopping)

    def started_at(self, name: str) -> float:
        child = next((c for c in self.children if c.name == name), None)
        return child.started_at if child is not None else self._t0

    def stop_all(self) -> None:
        """Stop the children tier by tier, the highest `tier` first (the query API and chat page, then
        Dagster, then the model services, then Milvus): a part never loses what it talks to while it still
        answers. Each tier gets SIGTERM to every process group in it, then SIGKILL to any still there after
        STOP_GRACE_S; each kill is said and counted (`self.killed`)."""
        self._stopping = True
        for tier in sorted({c.tier for c in self.children}, reverse=True):
            group = [c for c in reversed(self.children) if c.tier == tier and c.proc is not None]
            for child in group:
                if child.proc.poll() is None:
                    _signal_group(child.proc, signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_S
            for child in group:
                if not stop_group(child.proc, max(0.1, deadline - time.monotonic()), signal_first=False):
                    self.killed.append(child.name)
                    self.say(f"mmrag up: {child.name} did not stop within {STOP_GRACE_S:.0f} s of SIGTERM: killed")
        if self.killed:
            self.say(f"mmrag up: {len(self.killed)} part(s) killed after the grace period: {', '.join(self.killed)}")
        for child in self.children:
            self._mark(child.name, "stopped", "up stopped" + (" (killed)" if child.name in self.killed else ""))


def stop_group(proc: subprocess.Popen, grace_s: float, signal_first: bool = True) -> bool:
    """Stop a child started with `start_new_session=True` and everything in its process group: SIGTERM
    (unless `signal_first` is False: already sent), up to `grace_s` to exit, then SIGKILL; always reaped.
    Returns whether it exited within the grace (False: it had to be killed)."""
    if signal_first and proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
    clean = True
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        clean = False
    _signal_group(proc, signal.SIGKILL)  # the child if it is still there, and whatever it left in its group
    proc.wait()
    return clean


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _status(code: int | None) -> str:
    if code is None:
        return "no status"
    return f"signal {-code}" if code < 0 else f"exit code {code}"


def _tail(path: Path | None, n: int = 12) -> str:
    if path is None or not path.exists():
        return "  (no log)"
    lines = path.read_text(errors="replace").splitlines()[-n:]
    return "\n".join("  | " + ln for ln in lines)


def counts_line(manifest) -> str:
    """One status line: how many files are indexed, in flight, failed, skipped."""
    from collections import Counter

    from mmrag.manifest import Status

    c = Counter(r.status for r in manifest.all())
    done = c[Status.INDEXED] + c[Status.PARTIAL]
    return (f"{done} indexed, {c[Status.INDEXING] + c[Status.PENDING]} in progress, {c[Status.FAILED]} failed, "
            f"{c[Status.SKIPPED]} skipped")


def run_children(sup: Supervisor, manifest, poll_s: float = 1.0, monitor=None) -> int:
    """Supervise until a signal (0) or a child out of restarts (1); `monitor` (a
    mmrag.serve.health.HealthMonitor) probes the parts once they are started."""
    stop = {"sig": None}

    def on_signal(signum, _frame):
        stop["sig"] = signum

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    code, last = 0, ""
    try:
        if sup.board is not None:
            sup.board.write()  # every part "starting" until probed: /healthz never says "ok" too early
        sup.start_all()
        if monitor is not None:
            monitor.check_once()  # every part's state before "running" is said
            monitor.start()
        sup.say("mmrag up: running; Ctrl-C stops every part" + (f" (health: {sup.board.overall()}; GET /healthz "
                                                                 "or mmrag status shows each part)" if sup.board else ""))
        while stop["sig"] is None:
            if not sup.check():
                code = 1
                break
            try:
                line = counts_line(manifest)
            except Exception:  # noqa: BLE001 - the manifest is being created
                line = last
            if line != last:
                sup.say(f"mmrag up: {line}")
                last = line
            time.sleep(poll_s)
    except RuntimeError as e:
        sup.say(f"mmrag up: {e}")
        code = 1
    finally:
        sup.say("mmrag up: stopping")
        if monitor is not None:
            monitor.stop()
        sup.stop_all()
        for s, h in old.items():
            signal.signal(s, h)
    return code


def venv_tool(name: str) -> str:
    """A console script of this environment (dagster-daemon...), even when the venv is not on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name
