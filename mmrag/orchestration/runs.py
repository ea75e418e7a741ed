"""Runs whose process died: find them, mark them failed, free their pool slots; wait for a slot.

Dagster keeps a run STARTED, and its pool slots claimed, when the process executing it dies
(SIGKILL, OOM killer, reboot, a closed laptop): every later run that needs the pool then waits
forever. Each run of this project records who executes it (`mmrag/host`, `mmrag/pid` and the
process's start time, so a reused pid is not mistaken for it): the CLI puts the tags on the runs it
executes in-process, and a run launched by the daemon adds them when its resources start
(`DataDirResource`). Before an ingest starts (CLI, sensor, schedule), `reap_dead_runs` marks every
such run of this host whose process is gone as failed and frees its slots. Runs executed elsewhere
are left to Dagster's run monitoring (`dagster.yaml`).

Dagster 1.13's in-process executor polls a pool it is waiting for without sleeping (its next-check
interval is `min(0, ...)`), which spins a core: `wait_for_pool` waits with sleeps and a deadline
before a run starts, and `patch_claim_polling` makes the executor's own wait sleep.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Callable

HOST_TAG, PID_TAG, START_TAG = "mmrag/host", "mmrag/pid", "mmrag/pid-start"
POOLS = ("mmrag_index",)


def process_start(pid: int) -> str | None:
    """The process's start time as the kernel reports it, or None if there is no such process."""
    try:
        import psutil

        return f"{psutil.Process(pid).create_time():.2f}"
    except Exception:  # noqa: BLE001 - NoSuchProcess, AccessDenied, or psutil missing
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return "?"
        return "?"


def owner_tags(pid: int | None = None) -> dict[str, str]:
    pid = os.getpid() if pid is None else pid
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(pid), START_TAG: process_start(pid) or "?"}


def owner_alive(tags: dict[str, str]) -> bool | None:
    """True/False for a run of this host; None when another host executes it (or no tags say)."""
    if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG, "").isdigit():
        return None
    started = process_start(int(tags[PID_TAG]))
    if started is None:
        return False
    recorded = tags.get(START_TAG, "?")
    return started == "?" or recorded == "?" or started == recorded


def tag_current_run(instance, run_id: str) -> None:
    """Called in a run's own process (by a resource): record who executes it, once."""
    run = instance.get_run_by_id(run_id)
    if run is not None and run.tags.get(PID_TAG) != str(os.getpid()):
        instance.add_run_tags(run_id, owner_tags())


_stack_file = None


_quick_exit = False


def skip_exit_collection() -> None:
    """At exit, freeze the heap before the interpreter's last garbage collection: a process that
    held torch, Docling, LightRAG and Dagster spent ~4 s of CPU collecting a heap the OS frees anyway
    (measured: a 5-file `mmrag ingest` left `main` 4.8 s before it ended, 0.7 s frozen). atexit
    handlers still run; objects in reference cycles are not finalized, which Python never promises
    at exit anyway (every store mmrag writes is committed or closed explicitly). Once per process."""
    global _quick_exit
    import atexit
    import gc

    if not _quick_exit:
        _quick_exit = True
        atexit.register(gc.freeze)


def enable_stack_dumps(logs_dir: Path) -> Path | None:
    """`kill -USR1 <pid>` of a run's process writes every thread's stack to
    `<logs_dir>/stacks-<pid>.txt` (appended; the process goes on). For a run that seems stuck: the
    pid is the run's `mmrag/pid` tag. Once per process; None where it cannot be set up. The file is
    removed when the process exits with it empty."""
    global _stack_file
    import atexit
    import faulthandler
    import signal

    if _stack_file is not None:
        return Path(_stack_file.name)
    try:
        logs_dir.mkdir(parents=True, exist_ok=True)
        f = open(logs_dir / f"stacks-{os.getpid()}.txt", "a")  # noqa: SIM115 - open while the process lives
        faulthandler.register(signal.SIGUSR1, file=f, all_threads=True)
    except (OSError, ValueError, AttributeError):  # no SIGUSR1 (Windows), read-only data dir
        return None
    _stack_file = f

    def drop_if_empty() -> None:
        path = Path(f.name)
        faulthandler.unregister(signal.SIGUSR1)
        f.close()
        if path.exists() and path.stat().st_size == 0:
            path.unlink()

    atexit.register(drop_if_empty)
    return Path(f.name)


def reap_dead_runs(instance, log: Callable[[str], None] = lambda msg: None) -> list[str]:
    """Mark runs of this host whose process is gone as failed and free their pool slots; also free
    slots still held by runs that already ended. Returns the run ids it cleaned up."""
    from dagster import DagsterRunStatus, RunsFilter

    cleaned: list[str] = []
    live = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]
    for run in instance.get_runs(filters=RunsFilter(statuses=live)):
        if owner_alive(run.tags) is not False:
            continue
        msg = (f"the process executing this run (pid {run.tags.get(PID_TAG)} on {run.tags.get(HOST_TAG)}) is gone; "
               "marked failed by mmrag, its pool slots freed, its files stay stale and are redone")
        instance.report_run_failed(run, message=msg)
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        cleaned.append(run.run_id)
        log(f"run {run.run_id[:8]}: {msg}")
    storage = instance.event_log_storage
    if getattr(storage, "supports_global_concurrency_limits", False):
        for pool in POOLS:
            for run_id in storage.get_concurrency_info(pool).active_run_ids:
                run = instance.get_run_by_id(run_id)
                if run_id not in cleaned and (run is None or run.is_finished):
                    storage.free_concurrency_slots_for_run(run_id)
                    cleaned.append(run_id)
                    log(f"run {run_id[:8]}: ended but still held a {pool} slot; freed")
    return cleaned


def wait_for_pool(instance, pool: str, timeout_s: float, say: Callable[[str], None] = lambda msg: None,
                  poll_s: float = 2.0) -> None:
    """Return once `pool` has a free slot; meanwhile reap dead runs and say who holds it. Raises
    TimeoutError after `timeout_s`. Sleeps between checks (never spins)."""
    storage = instance.event_log_storage
    if not getattr(storage, "supports_global_concurrency_limits", False):
        return
    deadline, said = time.monotonic() + timeout_s, None
    while True:
        info = storage.get_concurrency_info(pool)
        limit = info.slot_count if info.slot_count else info.limit
        if not limit or info.active_slot_count < limit:
            return
        reap_dead_runs(instance, say)
        holders = sorted(info.active_run_ids)
        if time.monotonic() > deadline:
            raise TimeoutError(f"pool {pool} stayed busy for {timeout_s:.0f} s (held by run(s) "
                               f"{', '.join(h[:8] for h in holders)}); MMRAG_SLOT_WAIT_S sets the wait")
        if holders != said:
            who = []
            for run_id in holders:
                run = instance.get_run_by_id(run_id)
                tags = run.tags if run else {}
                who.append(f"run {run_id[:8]} (pid {tags.get(PID_TAG, '?')} on {tags.get(HOST_TAG, '?')})")
            say(f"waiting for pool {pool}: held by {', '.join(who)}; up to {timeout_s:.0f} s")
            said = holders
        time.sleep(poll_s)


def patch_claim_polling() -> None:
    """Make Dagster's in-process executor sleep while a step waits for a pool slot (see above)."""
    from dagster._core.execution.plan import instance_concurrency_context as icc

    cls = icc.InstanceConcurrencyContext
    if getattr(cls, "_mmrag_sleeps", False):
        return

    def interval_to_next_pending_claim_check(self) -> float:
        if not self._pending_claims:
            return 0.0
        now = time.time()
        waits = [ready_at - now for ready_at in self._pending_timeouts.values()]
        return max(0.5, min(waits)) if waits else 0.5

    cls.interval_to_next_pending_claim_check = interval_to_next_pending_claim_check
    cls._mmrag_sleeps = True
