"""`mmrag up` says when a part is broken: each part is broken on purpose while `up` runs (a service
frozen with SIGSTOP still listens but answers nothing; a code location that fails to load), and `up`
names it on its terminal within seconds, `GET /healthz`, `mmrag status` and `/metrics` report it,
and it is reported working again once it is."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest
from conftest import REPO, SAMPLE
from helpers import wait_while_up

from mmrag.serve.supervisor import free_port

pytestmark = pytest.mark.slow  # the fast loop: pytest -m "not slow"


def _start_up(tmp_path, **extra: str):
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(SAMPLE / "duck.md", docs)
    home = tmp_path / "home"
    ports = {"api": free_port(), "ui": free_port(), "dagster": free_port()}
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMRAG_") and k != "DAGSTER_HOME"}
    env.update(MMRAG_HOME=str(home), MMRAG_CLIP_PRETRAINED="random", HF_HUB_OFFLINE="1", MMRAG_SENSOR_INTERVAL_S="2",
               PYTHONPATH=str(REPO), **extra)
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mmrag.cli", "up", str(docs), "--api-port", str(ports["api"]),
                                 "--ui-port", str(ports["ui"]), "--dagster-port", str(ports["dagster"])],
                                env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    return proc, log, f"http://127.0.0.1:{ports['api']}", env


def _stop(proc) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            for p in psutil.Process(proc.pid).children(recursive=True):
                p.kill()
            proc.kill()


def _health(api: str) -> dict:
    try:
        return httpx.get(f"{api}/healthz", timeout=10).json()
    except (httpx.HTTPError, ValueError):
        return {}


def _child(proc, needle: str) -> psutil.Process:
    for p in psutil.Process(proc.pid).children(recursive=False):
        if needle in " ".join(p.cmdline()):
            return p
    raise LookupError(needle)


def test_up_reports_each_part_and_names_the_one_that_stops_working(tmp_path):
    proc, log, api, env = _start_up(tmp_path)
    try:
        board = wait_while_up("every part working", lambda: (h := _health(api)).get("status") == "ok" and h, 300, proc, log)
        assert "parts" in board, board
        assert set(board["parts"]) == {"milvus", "embed", "parse", "daemon", "dagster", "api", "ui", "runs"}
        st = subprocess.run([sys.executable, "-m", "mmrag.cli", "status", "--json"], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
        assert json.loads(st.stdout)["service"]["status"] == "ok", st.stderr[-2000:]
        assert 'mmrag_part_up{part="daemon"} 1.0' in httpx.get(f"{api}/metrics", timeout=10).text

        # The parse and embedding services frozen: their ports still accept, their answers stop.
        for needle, part in (("parse-server", "parse"), ("embed-server", "embed")):
            child = _child(proc, needle)
            t0 = time.monotonic()
            child.suspend()
            try:
                wait_while_up(f"{part} reported broken", lambda: f"{part} is BROKEN" in log.read_text(), 60, proc, log)
                said_s = time.monotonic() - t0
                assert said_s < 30, said_s  # within seconds (a probe every 3 s, each waiting up to 10 s)
                h = _health(api)
                assert h["status"] == "degraded" and h["parts"][part]["state"] == "broken", h
                assert "did not answer" in h["parts"][part]["reason"] or "timed out" in h["parts"][part]["reason"].lower(), h
                assert f'mmrag_part_up{{part="{part}"}} 0.0' in httpx.get(f"{api}/metrics", timeout=10).text
                text = subprocess.run([sys.executable, "-m", "mmrag.cli", "status"], env=env, cwd=REPO,
                                      capture_output=True, text=True, timeout=120).stdout
                assert "mmrag up: degraded" in text and f"{part}" in text and "broken" in text, text
            finally:
                child.resume()
            wait_while_up(f"{part} working again", lambda: f"{part} works again" in log.read_text(), 60, proc, log)
        metrics = httpx.get(f"{api}/metrics", timeout=10).text
        assert 'mmrag_part_failures_total{part="parse"} 1.0' in metrics, metrics[-2000:]
        wait_while_up("all parts working again", lambda: _health(api).get("status") == "ok", 60, proc, log)
    finally:
        _stop(proc)
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert not (tmp_path / "home" / "health.json").exists()  # withdrawn: no `up`, no board


def test_up_names_a_code_location_that_fails_to_load(tmp_path):
    """The definitions fail to load (MMRAG_FAIL_AT=definitions, as a broken install would): `up`'s parts all
    listen, but nothing could ever be indexed; `up` says so, naming the error, soon after the webserver is up."""
    proc, log, api, _ = _start_up(tmp_path, MMRAG_FAIL_AT="definitions")
    try:
        wait_while_up("the broken code location named", lambda: "dagster is BROKEN" in log.read_text(), 240, proc, log)
        text = log.read_text()
        assert "failed to load" in text and "MMRAG_FAIL_AT=definitions" in text, text[-3000:]
        h = _health(api)
        assert h["status"] == "degraded" and "failed to load" in h["parts"]["dagster"]["reason"], h
    finally:
        _stop(proc)
