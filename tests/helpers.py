"""Helpers for end-to-end tests: run the CLI in-process, serve the query API, read the index back."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from conftest import REPO

from mmrag.cli import main
from mmrag.config import Settings
from mmrag.index.milvus_store import IMAGE, TEXT, MilvusStore
from mmrag.serve.supervisor import free_port  # noqa: F401  (the tests' free port)


def cli_json(capsys, *args) -> tuple[int, dict]:
    capsys.readouterr()
    code = main([*args, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def store() -> MilvusStore:
    s = Settings.from_env()
    return MilvusStore(s.resolved_milvus_uri, prefix=s.collection_prefix)


def rows_by_file(modality: str = TEXT) -> dict[str, set[str]]:
    st = store()
    out: dict[str, set[str]] = {}
    if not st.has(modality):
        return out
    for r in st.client.query(st._loaded(modality), filter="", output_fields=["id", "file_key"], limit=16384):
        out.setdefault(r["file_key"], set()).add(r["id"])
    return out


def folder(root: Path, files: dict[str, str]) -> Path:
    """`root` made, holding `files` (name -> text)."""
    root.mkdir(parents=True)
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def two_notes(tmp_path: Path) -> Path:
    """A folder `docs` with two small Markdown files, a.md and b.md (keys docs:a.md, docs:b.md)."""
    return folder(tmp_path / "docs", {"a.md": "# Alpha\n\nMallards dabble in ponds.\n",
                                      "b.md": "# Beta\n\nThe peregrine falcon dives fast.\n"})


__all__ = ["cli_json", "folder", "two_notes", "store", "rows_by_file", "open_instance_together", "TEXT", "IMAGE"]


def wait_while_up(what: str, check, timeout: float, proc, log, home=None):
    """Poll `check()` every second until it returns something truthy (returned), while the `mmrag up`
    process `proc` runs; fail with the end of its `log` if it exits, and with what `up_diagnosis`
    finds (`home`: its data dir, default `<log's folder>/home`) if `timeout` passes."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"mmrag up exited while waiting for {what}:\n{log.read_text()[-3000:]}"
        try:
            if got := check():
                return got
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise AssertionError(f"no {what} within {timeout:.0f} s:\n{log.read_text()[-3000:]}\n"
                         f"{up_diagnosis(proc, home or log.parent / 'home')}")


def up_diagnosis(proc, home) -> str:
    """What a stuck `mmrag up` is doing: its processes, its runs and their last steps, the stacks of
    the runs' processes (`kill -USR1`, mmrag.orchestration.runs.enable_stack_dumps), the end of the daemon's log."""
    import os
    import signal
    import time
    from pathlib import Path

    import psutil

    out = ["--- processes under mmrag up:"]
    try:
        for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]:
            with p.oneshot():
                cpu = p.cpu_times()
                out.append(f"  {p.pid} {p.status()} cpu {cpu.user + cpu.system:.1f} s: {' '.join(p.cmdline())[:160]}")
    except psutil.Error as e:
        out.append(f"  ({e})")
    home = Path(home)
    try:
        from dagster import DagsterInstance

        from mmrag.orchestration.runs import PID_TAG

        with DagsterInstance.from_config(str(home / "dagster")) as instance:
            for run in instance.get_runs(limit=10):
                steps = [e.dagster_event.event_type_value + " " + (e.step_key or "")
                         for e in instance.all_logs(run.run_id) if e.dagster_event is not None][-4:]
                out.append(f"--- run {run.run_id[:8]} {run.status.value} pid {run.tags.get(PID_TAG)}: {steps}")
                if run.status.value == "STARTED" and run.tags.get(PID_TAG, "").isdigit():
                    try:
                        os.kill(int(run.tags[PID_TAG]), signal.SIGUSR1)
                    except OSError:
                        pass
    except Exception as e:  # noqa: BLE001 - a diagnosis never hides the failure
        out.append(f"--- runs: {e!r}")
    time.sleep(1)
    for f in sorted((home / "logs").glob("stacks-*.txt")):
        out.append(f"--- {f.name}:\n{f.read_text(errors='replace')[-6000:]}")
    daemon = home / "logs" / "daemon.log"
    if daemon.exists():
        noise = ("Checking for new runs", "skipped: no change", "Priority sorting")
        lines = [ln for ln in daemon.read_text(errors="replace").splitlines() if not any(n in ln for n in noise)]
        out.append("--- daemon.log (end):\n" + "\n".join(ln[:300] for ln in lines[-60:]))
    return "\n".join(out)


def wait_ready(what: str, probe, proc, timeout: float, output=lambda: "") -> None:
    """Poll `probe()` (connection errors count as not yet) until it is true, while the child `proc`
    runs; fail with `output()` (the end of its log) if it exits or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"{what} exited with {proc.returncode}:\n{output()}"
        try:
            if probe():
                return
        except (OSError, httpx.TransportError):
            pass
        assert time.monotonic() < deadline, f"{what} did not come up within {timeout:.0f} s:\n{output()}"
        time.sleep(0.3)


@contextlib.contextmanager
def api_server(env: dict):
    """`mmrag api` on a free port (a child process, as test_api runs it); stopped with SIGINT on exit,
    which withdraws its api.json (so later `mmrag query`s answer in-process)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mmrag.cli", "api", "--port", str(port)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready("mmrag api", lambda: httpx.get(f"{url}/healthz", timeout=2).status_code == 200, proc, 120,
                   lambda: proc.stdout.read()[-3000:] if proc.poll() is not None else "")
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


# Each process imports mmrag and Dagster, then waits for the same moment to open the instance.
_OPENER = """
import os, sys, time
from pathlib import Path
from mmrag.config import Settings
from mmrag.orchestration.instance import dagster_instance
import dagster  # noqa: F401 - imported before the barrier, so the race is on the storage alone
go = Path(sys.argv[1])
while not go.exists():
    time.sleep(0.01)
instance = dagster_instance(Settings.from_env())
instance.get_runs(limit=1)
instance.add_dynamic_partitions("source_files", [f"p{os.getpid()}"])
instance.event_log_storage.get_concurrency_info("mmrag_index")
instance.dispose()
print("ok")
"""


def open_instance_together(go: Path, homes: list[Path], settle_s: float = 6.0, **extra: str) -> list[subprocess.CompletedProcess]:
    """One process per entry of `homes` (its MMRAG_HOME; repeat a home for processes sharing one) opens
    the Dagster instance at the same moment (each waits for the file `go` after its imports), as
    `mmrag up`'s daemon and webserver, or two ingests, do on a new data dir. Their results."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("MMRAG_") and k != "DAGSTER_HOME"}
    env.update(MMRAG_CLIP_PRETRAINED="random", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), **extra)
    procs = [subprocess.Popen([sys.executable, "-c", _OPENER, str(go)], env={**env, "MMRAG_HOME": str(home)}, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for home in homes]
    time.sleep(settle_s)  # every process past its imports, waiting on `go`
    go.touch()
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def health(api: str) -> dict:
    """`GET /healthz` of a running API ({} while it does not answer)."""
    try:
        return httpx.get(f"{api}/healthz", timeout=10).json()
    except (httpx.HTTPError, ValueError):
        return {}


def assert_every_part_reported(api: str, env: dict, proc, log) -> None:
    """Under `mmrag up`: every part works, as `GET /healthz`, `mmrag status --json` and `/metrics` say."""
    board = wait_while_up("every part working", lambda: (h := health(api)).get("status") == "ok" and h, 300, proc, log)
    assert set(board["parts"]) == {"milvus", "embed", "parse", "daemon", "dagster", "api", "ui", "runs"}, board
    st = subprocess.run([sys.executable, "-m", "mmrag.cli", "status", "--json"], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=120)
    assert json.loads(st.stdout)["service"]["status"] == "ok", st.stderr[-2000:]
    assert 'mmrag_part_up{part="daemon"} 1.0' in httpx.get(f"{api}/metrics", timeout=10).text


def assert_reported_broken(proc, log, api: str, env: dict, needle: str, part: str) -> None:
    """Freeze the child of `mmrag up` whose command line holds `needle` (SIGSTOP: its port still accepts,
    its answers stop): `up` says "<part> is BROKEN" within seconds, `/healthz`, `mmrag status` and
    `/metrics` say so; resumed, it is said to work again."""
    import psutil

    child = next(p for p in psutil.Process(proc.pid).children() if needle in " ".join(p.cmdline()))
    t0 = time.monotonic()
    child.suspend()
    try:
        wait_while_up(f"{part} reported broken", lambda: f"{part} is BROKEN" in log.read_text(), 60, proc, log)
        assert time.monotonic() - t0 < 30  # a probe every 3 s, each given up on after 12 s
        h = health(api)
        assert h["status"] == "degraded" and h["parts"][part]["state"] == "broken", h
        assert "did not answer" in h["parts"][part]["reason"] or "timed out" in h["parts"][part]["reason"].lower(), h
        assert f'mmrag_part_up{{part="{part}"}} 0.0' in httpx.get(f"{api}/metrics", timeout=10).text
        text = subprocess.run([sys.executable, "-m", "mmrag.cli", "status"], env=env, cwd=REPO, capture_output=True,
                              text=True, timeout=120).stdout
        assert "mmrag up: degraded" in text and part in text and "broken" in text, text
    finally:
        child.resume()
    wait_while_up(f"{part} working again", lambda: f"{part} works again" in log.read_text(), 60, proc, log)
    assert f'mmrag_part_failures_total{{part="{part}"}} 1.0' in httpx.get(f"{api}/metrics", timeout=10).text


@contextlib.contextmanager
def milvus_lite_server(folder: Path):
    """A `milvus-lite server` of its own on `folder`/milvus (what MMRAG_MILVUS_URI names in a deployment);
    yields its URI; stopped with SIGTERM, then SIGKILL after 30 s (a server slow to stop never fails a test)."""
    from mmrag.serve import milvus_lite_server
    from mmrag.serve.supervisor import port_open, stop_group

    port = free_port()
    log = folder / "milvus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(milvus_lite_server.command(folder / "milvus", port), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
    try:
        wait_ready("milvus-lite server", lambda: port_open(port), proc, 120, lambda: log.read_text()[-2000:])
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_group(proc, 30)
