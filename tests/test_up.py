"""`mmrag up` for real: the Milvus Lite server, dagster-daemon (sensor on), dagster-webserver, the query
API and the chat page as child processes over one index, with the loopback model server as the LLM.
Files copied into the watched folder show up in the API's hits and graph context, and a CLI ingest
beside `up` writes through its Milvus server; API queries and the chat page in a browser answer while runs write; an ingest run
killed with SIGKILL is marked failed, its slots freed and its files indexed again, and the index then
equals a clean ingest of the same folders; Ctrl-C leaves no child and no open port. (Edits and deletions, the
services, the daemon and runs killed while files keep coming: tests/test_soak.py.)"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest
from browser_tools import _ask as _ask_page
from browser_tools import _no_traceback
from conftest import REPO, SAMPLE
from crash_tools import diff, env_for, index_state, new_home
from helpers import assert_every_part_reported, assert_reported_broken, wait_while_up
from openai_server import FakeOpenAIServer, lightrag_aware

from mmrag.serve.supervisor import free_port, port_open

pytestmark = pytest.mark.slow  # the fast loop: pytest -m "not slow"

RANGE_START = "dagster/asset_partition_range_start"


@pytest.fixture
def llm():
    with FakeOpenAIServer() as server:
        server.responder = lightrag_aware
        yield server


@pytest.fixture
def up(tmp_path, llm):
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(SAMPLE / "duck.md", docs)
    home = tmp_path / "home"
    ports = {"api": free_port(), "ui": free_port(), "dagster": free_port()}
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMRAG_") and k != "DAGSTER_HOME"}
    env.update(MMRAG_HOME=str(home), MMRAG_CLIP_PRETRAINED="random", HF_HUB_OFFLINE="1",
               MMRAG_SENSOR_INTERVAL_S="3", MMRAG_RETRY_BACKOFF_S="2", PYTHONPATH=str(REPO), MMRAG_LLM_URL=llm.base_url,
               MMRAG_LLM_MODEL="fake-llm", MMRAG_VLM_MODEL="fake-vlm", MMRAG_LLM_RETRIES="0")
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mmrag.cli", "up", str(docs), "--api-port", str(ports["api"]),
                                 "--ui-port", str(ports["ui"]), "--dagster-port", str(ports["dagster"])],
                                env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    yield {"proc": proc, "docs": docs, "ports": ports, "log": log, "api": f"http://127.0.0.1:{ports['api']}", "env": env,
           "home": home, "llm": llm}
    if proc.poll() is None:
        proc.kill()
        for p in psutil.Process(proc.pid).children(recursive=True) if psutil.pid_exists(proc.pid) else []:
            p.kill()


def _ask(api: str, question: str, mode: str = "mix") -> dict:
    """The API's answer."""
    r = httpx.post(f"{api}/v1/query", json={"question": question, "top_k": 5, "mode": mode}, timeout=60)
    r.raise_for_status()
    return r.json()


def _files(res: dict) -> set[str]:
    return {h["file"] for h in res["hits"]}


def _in_flight_run(instance, file_key: str):
    """The STARTED run whose range starts at `file_key`, once its process has recorded its pid."""
    from dagster import DagsterRunStatus, RunsFilter

    from mmrag.orchestration.runs import PID_TAG

    for run in instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED])):
        if run.tags.get(RANGE_START) == file_key and run.tags.get(PID_TAG, "").isdigit():
            return run
    return None


def _holds_slot(instance, run_id: str) -> bool:
    info = instance.event_log_storage.get_concurrency_info("mmrag_index")
    return any(slot.run_id == run_id for slot in info.claimed_slots)


def test_up_serves_a_live_index_and_stops_cleanly(up, browser):
    api, proc, log, docs = up["api"], up["proc"], up["log"], up["docs"]
    wait_while_up("duck.md in the API's hits", lambda: "duck.md" in _files(_ask(api, "Which ducks dabble?")), 240, proc, log)

    # Health: every part works; a service frozen (listening, answering nothing) is named broken, then works again.
    assert_every_part_reported(api, up["env"], proc, log)
    for needle, part in (("parse-server", "parse"), ("embed-server", "embed")):
        assert_reported_broken(proc, log, api, up["env"], needle, part)

    # The CLI works beside it: `mmrag ingest` goes to up's Milvus server (not the locked data dir).
    other = docs.parent / "other"
    other.mkdir()
    (other / "swans.md").write_text("# Swans\n\nMute swans hiss at intruders near their nests.\n")
    cli = subprocess.run([sys.executable, "-m", "mmrag.cli", "ingest", str(other), "--json"], cwd=REPO,
                         env={**up["env"]}, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert "swans.md" in _files(_ask(api, "Which birds hiss at intruders?", mode="naive"))

    # A second batch: while its run writes, the API keeps answering.
    shutil.copy(SAMPLE / "table_06.html", docs)
    (docs / "grebes.md").write_text("# Grebes\n\nGrebes build floating nests of reeds on quiet lakes.\n")
    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda i: httpx.post(f"{api}/v1/query", json={"question": f"ducks {i}", "top_k": 3},
                                                   timeout=60).status_code, range(20)))
    assert codes == [200] * 20
    found = wait_while_up("grebes.md with its graph context",
                  lambda: (r := _ask(api, "Which birds build floating nests?")) and "grebes.md" in _files(r)
                  and "grebes.md" in r["graph_context"] and r, 240, proc, log)
    assert "docs:grebes.md" in found["graph_context"]

    # (Edits and deletions under `up`, with the whole index compared after: tests/test_soak.py.)

    # An ingest run in flight (every model request now takes 15 s): the chat page answers from the
    # index meanwhile; then the run's process is killed with SIGKILL.
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    instance = DagsterInstance.from_config(str(up["home"] / "dagster"))
    up["llm"].latency_s = 15
    (docs / "herons.md").write_text("# Herons\n\nGrey Herons stalk Frogs in the Shallows at Dawn.\n\n"
                                    "# Egrets\n\nLittle Egrets shuffle their Feet to flush Shrimp.\n")
    run = wait_while_up("an ingest run of herons.md in flight", lambda: _in_flight_run(instance, "docs:herons.md"),
                120, proc, log)
    page_log = up["home"] / "logs" / "ui.log"
    browser.get(f"http://127.0.0.1:{up['ports']['ui']}")
    hits = _ask_page(browser, "Which ducks dabble?", 1, page_log)
    assert any("docs:duck.md" in h for h in hits), hits
    _no_traceback(browser)
    assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.STARTED  # in flight all along
    pid = int(run.tags["mmrag/pid"])
    os.kill(pid, signal.SIGKILL)
    up["llm"].latency_s = 0
    wait_while_up("the killed run marked failed, its slot freed",
          lambda: instance.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE
          and not _holds_slot(instance, run.run_id), 60, proc, log)
    wait_while_up("herons.md indexed again, graph context included",
          lambda: (r := _ask(api, "Which birds stalk frogs at dawn?")) and "herons.md" in _files(r)
          and "docs:herons.md" in r["graph_context"], 240, proc, log)
    # (The embedding service, the parse service and the daemon killed under load: tests/test_soak.py.)
    wait_while_up("every file indexed", lambda: all(
        f["status"] == "indexed" for src in httpx.get(f"{api}/v1/status", timeout=60).json()["sources"].values()
        for f in src["files"]), 240, proc, log)
    busy = [DagsterRunStatus.QUEUED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]
    wait_while_up("no run in flight", lambda: not instance.get_runs(RunsFilter(statuses=busy)), 120, proc, log)

    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) >= 7  # milvus, embedding and parse services, daemon (+ its code server), webserver, api, ui
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 0, log.read_text()[-3000:]
    assert not (up["home"] / "health.json").exists()  # withdrawn: no `up`, no health board
    time.sleep(1)
    assert not [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not any(port_open(p) for p in up["ports"].values())

    # The index equals a clean ingest of the same two folders (no history of kills, edits, deletes).
    clean = new_home(up["home"].parent / "clean")
    for root in (docs, other):
        res = subprocess.run([sys.executable, "-m", "mmrag.cli", "ingest", str(root), "--json"], cwd=REPO,
                             env=env_for(clean, **{k: v for k, v in up["env"].items() if k.startswith("MMRAG_LLM")
                                                   or k == "MMRAG_VLM_MODEL"}),
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
    got, want = index_state(up["home"], cache=False), index_state(clean, cache=False)
    assert not diff(got, want), diff(got, want)
