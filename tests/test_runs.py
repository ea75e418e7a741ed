"""Dead runs and pool slots on a real Dagster instance: a run whose process is gone is marked failed
and its slot freed; a wait for a slot held by a live process is bounded, says who holds it, sleeps."""

from __future__ import annotations

import gc
import subprocess
import time
import uuid

import pytest


@pytest.fixture
def instance(mmrag_env):
    from dagster import DagsterInstance

    inst = DagsterInstance.get()
    inst.event_log_storage.set_concurrency_slots("mmrag_index", 1)
    yield inst
    inst.dispose()


def _run_holding_slot(instance, pid: int) -> str:
    from dagster import DagsterRunStatus
    from dagster._core.storage.dagster_run import DagsterRun

    from mmrag.orchestration.runs import owner_tags

    run_id = str(uuid.uuid4())
    instance.add_run(DagsterRun(job_name="ingest_job", run_id=run_id, status=DagsterRunStatus.STARTED,
                                tags=owner_tags(pid)))
    claim = instance.event_log_storage.claim_concurrency_slot("mmrag_index", run_id, "milvus_partitions", 0)
    assert claim.is_claimed
    return run_id


def test_wait_for_a_live_holder_is_bounded_and_sleeps_then_a_dead_one_is_reaped(instance):
    from dagster import DagsterRunStatus

    from mmrag.orchestration.runs import wait_for_pool

    holder = subprocess.Popen(["sleep", "60"])
    try:
        run_id = _run_holding_slot(instance, holder.pid)
        said: list[str] = []
        # The wait's own CPU: this thread's, and without a full garbage collection of the test
        # process's heap (torch, Docling, Dagster after 200 tests) landing in the window (CI: 2.5 s
        # of CPU in a 3.1 s wait, in a full run only).
        gc.collect()
        gc.disable()
        try:
            cpu0, t0 = time.thread_time(), time.monotonic()
            with pytest.raises(TimeoutError, match="pool mmrag_index stayed busy"):
                wait_for_pool(instance, "mmrag_index", timeout_s=3, say=said.append, poll_s=0.5)
            waited, cpu = time.monotonic() - t0, time.thread_time() - cpu0
        finally:
            gc.enable()
        assert 3 <= waited < 6
        assert cpu < 0.5 * waited, f"the wait used {cpu:.2f} s of CPU in {waited:.1f} s: it spins"
        assert said and run_id[:8] in said[0] and f"pid {holder.pid}" in said[0]
        assert instance.get_run_by_id(run_id).status == DagsterRunStatus.STARTED  # alive: left alone
    finally:
        holder.kill()
        holder.wait()
    t0 = time.monotonic()
    wait_for_pool(instance, "mmrag_index", timeout_s=10, poll_s=0.5)  # the holder died: reaped, slot freed
    assert time.monotonic() - t0 < 3
    assert instance.get_run_by_id(run_id).status == DagsterRunStatus.FAILURE
    assert instance.event_log_storage.get_concurrency_info("mmrag_index").active_slot_count == 0


def test_a_reused_pid_is_not_mistaken_for_the_run(instance):
    """The run's tags record its process's start time: another process with the same pid is not it."""
    import os

    from dagster import DagsterRunStatus

    from mmrag.orchestration.runs import START_TAG, reap_dead_runs

    run_id = _run_holding_slot(instance, os.getpid())
    assert reap_dead_runs(instance) == []  # this process is alive and started when recorded
    instance.add_run_tags(run_id, {START_TAG: "12345.00"})  # as if the pid had been reused since
    assert reap_dead_runs(instance) == [run_id]
    assert instance.get_run_by_id(run_id).status == DagsterRunStatus.FAILURE


def test_executor_waiting_for_a_slot_sleeps():
    """Dagster 1.13's in-process executor computes its next claim check as min(0, ...): it would spin."""
    from dagster._core.execution.plan.instance_concurrency_context import (
        InstanceConcurrencyContext,
    )

    from mmrag.orchestration.runs import patch_claim_polling

    patch_claim_polling()
    ctx = InstanceConcurrencyContext.__new__(InstanceConcurrencyContext)
    ctx._pending_claims, ctx._pending_timeouts = {"step"}, {"step": time.time() + 4}
    assert 3 < ctx.interval_to_next_pending_claim_check() <= 4
    ctx._pending_timeouts = {"step": time.time() - 1}
    assert ctx.interval_to_next_pending_claim_check() == 0.5


def test_a_run_process_writes_its_stacks_on_sigusr1_and_leaves_no_empty_file(tmp_path):
    """`kill -USR1 <run pid>` shows what a stuck run waits on; a process that was never asked leaves
    no file behind."""
    import signal
    import sys

    from conftest import REPO

    script = ("import os, signal, sys, threading, time\n"
              "from pathlib import Path\n"
              "from mmrag.orchestration.runs import enable_stack_dumps\n"
              "enable_stack_dumps(Path(sys.argv[1]))\n"
              "threading.Thread(target=time.sleep, args=(30,), name='waiter', daemon=True).start()\n"
              "print('ready', flush=True)\n"
              "sys.stdin.readline()\n")
    asked = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=REPO, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert asked.stdout.readline().strip() == "ready"
    asked.send_signal(signal.SIGUSR1)
    time.sleep(0.5)
    assert asked.poll() is None  # the process goes on
    asked.communicate("\n", timeout=30)
    dump = (tmp_path / f"stacks-{asked.pid}.txt").read_text()
    assert 'File "<string>"' in dump  # the main thread, waiting on stdin
    assert "threading.py" in dump  # and the waiter thread

    quiet = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=REPO, input="\n", text=True,
                           capture_output=True, timeout=60)
    assert quiet.returncode == 0, quiet.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"stacks-{asked.pid}.txt"]
