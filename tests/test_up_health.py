"""`mmrag up` says when a part is broken: a code location that fails to load leaves every part
listening and nothing ever indexed; `up` names it with its error on its terminal and in `GET /healthz`.
(The services frozen with SIGSTOP, which still listen but answer nothing, are broken on purpose in
`tests/test_up.py`'s run of `up`: `helpers.assert_reported_broken`.)"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import psutil
import pytest
from conftest import REPO, SAMPLE
from helpers import health, wait_while_up

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


def test_up_names_a_code_location_that_fails_to_load(tmp_path):
    """The definitions fail to load (MMRAG_FAIL_AT=definitions, as a broken install would): `up`'s parts all
    listen, but nothing could ever be indexed; `up` says so, naming the error, soon after the webserver is up."""
    proc, log, api, _ = _start_up(tmp_path, MMRAG_FAIL_AT="definitions")
    try:
        wait_while_up("the broken code location named", lambda: "dagster is BROKEN" in log.read_text(), 240, proc, log)
        text = log.read_text()
        assert "failed to load" in text and "MMRAG_FAIL_AT=definitions" in text, text[-3000:]
        h = health(api)
        assert h["status"] == "degraded" and "failed to load" in h["parts"]["dagster"]["reason"], h
    finally:
        _stop(proc)
