"""`mmrag up` in the configuration people deploy: the chat model and the text embeddings on a model server
(the loopback server speaking vLLM's OpenAI API, strict model names, so a local model can't stand in),
Milvus through a server that `up` does not own (a `milvus-lite server` started here, as a cluster's
address would be given), and Dagster on PostgreSQL (MMRAG_DAGSTER_PG_URL). Files written to the watched
folder are found through the API with their graph context, an edit replaces the text, a delete removes
the file, the API answers while runs write, the runs are recorded in PostgreSQL, the parse service
parsed them, and Ctrl-C leaves no child."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest
from conftest import REPO
from helpers import free_port, milvus_lite_server, wait_while_up
from openai_server import FakeOpenAIServer, lightrag_aware
from test_postgres import _assert_postgres, pg_server  # noqa: F401 - the module's PostgreSQL server
from test_production_settings import EMBED_MODEL, LLM_MODEL, embedded, words_embedding

pytestmark = pytest.mark.slow  # the fast loop: pytest -m "not slow"


@pytest.fixture
def milvus(tmp_path):
    """A Milvus server of its own (what MMRAG_MILVUS_URI names in a deployment), not a child of `up`."""
    with milvus_lite_server(tmp_path) as uri:
        yield uri


def _ask(api: str, question: str) -> dict:
    r = httpx.post(f"{api}/v1/query", json={"question": question, "top_k": 5, "mode": "mix"}, timeout=60)
    r.raise_for_status()
    return r.json()


def _files(res: dict) -> set[str]:
    return {h["file"] for h in res["hits"]}


def test_up_with_model_server_milvus_server_and_postgres(tmp_path, milvus, pg_server, monkeypatch):  # noqa: F811
    from mmrag.orchestration.instance import PG_URL_VAR, with_driver

    pg_url = pg_server()
    monkeypatch.setenv(PG_URL_VAR, with_driver(pg_url))  # for this process's look at the instance, at the end
    docs, home = tmp_path / "docs", tmp_path / "home"
    docs.mkdir()
    (docs / "pochards.md").write_text("# Pochards\n\nPochards dive to the bottom of lakes to feed on roots.\n")
    ports = {"api": free_port(), "ui": free_port(), "dagster": free_port()}
    api = f"http://127.0.0.1:{ports['api']}"
    with FakeOpenAIServer(models=(EMBED_MODEL, LLM_MODEL, "fake-vlm"), strict_models=True, embedding_dim=64) as llm:
        llm.embedder, llm.responder = words_embedding, lightrag_aware
        env = {k: v for k, v in os.environ.items() if not k.startswith("MMRAG_") and k != "DAGSTER_HOME"}
        env.update(MMRAG_HOME=str(home), MMRAG_CLIP_PRETRAINED="random", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO),
                   MMRAG_SENSOR_INTERVAL_S="2", MMRAG_RETRY_BACKOFF_S="2", MMRAG_MILVUS_URI=milvus,
                   MMRAG_DAGSTER_PG_URL=pg_url, MMRAG_LLM_URL=llm.base_url, MMRAG_LLM_MODEL=LLM_MODEL,
                   MMRAG_VLM_MODEL="fake-vlm", MMRAG_TEXT_EMBED_BACKEND="openai", MMRAG_TEXT_EMBED_MODEL=EMBED_MODEL,
                   MMRAG_TEXT_EMBED_URL=llm.base_url)
        log = tmp_path / "up.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "mmrag.cli", "up", str(docs), "--api-port", str(ports["api"]),
                                     "--ui-port", str(ports["ui"]), "--dagster-port", str(ports["dagster"])],
                                    env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_while_up("pochards.md with its graph context", lambda: (r := _ask(api, "Which birds dive to feed?"))
                          and "pochards.md" in _files(r) and "docs:pochards.md" in r["graph_context"], 300, proc, log)
            said = log.read_text()
            assert "milvus " not in said and "Milvus Lite server" not in said  # up runs no Milvus of its own
            assert "parse " in said and "embed " in said  # the warm services

            # New files while 4 clients ask: every answer is 200, the files are found.
            t0 = time.monotonic()
            (docs / "eiders.md").write_text("# Eiders\n\nEiders line their nests with soft down.\n")
            (docs / "grebes.md").write_text("# Grebes\n\nGrebes build floating nests of reeds on lakes.\n")
            with ThreadPoolExecutor(4) as pool:
                codes = list(pool.map(lambda i: httpx.post(f"{api}/v1/query", json={"question": f"nests {i}"},
                                                           timeout=60).status_code, range(16)))
            assert codes == [200] * 16
            wait_while_up("eiders.md and grebes.md", lambda: {"eiders.md", "grebes.md"} <= (
                _files(_ask(api, "Which birds line their nests with down?")) | _files(_ask(api, "floating nests of reeds"))),
                240, proc, log)
            found_s = time.monotonic() - t0

            (docs / "grebes.md").write_text("# Grebes\n\nGrebes carry their striped chicks on their backs.\n")
            wait_while_up("the edited text", lambda: any("striped chicks" in h["text"]
                                                         for h in _ask(api, "striped chicks on their backs")["hits"]),
                          240, proc, log)
            assert not any("floating nests" in h["text"] for h in _ask(api, "floating nests of reeds")["hits"])
            (docs / "eiders.md").unlink()
            wait_while_up("eiders.md gone", lambda: (r := _ask(api, "Which birds line their nests with down?"))
                          and "eiders.md" not in _files(r) and "eiders.md" not in r["graph_context"], 240, proc, log)

            # The model server embedded the chunks and the questions (under its own model name only),
            # and answered the graph extraction.
            texts = embedded(llm)
            assert any("striped chicks" in t for t in texts) and "Which birds dive to feed?" in texts
            assert llm.count("/v1/chat/completions") > 0
            # The warm parse service parsed the runs' files.
            parse_log = (home / "logs" / "parse.log").read_text()
            assert "docs:grebes.md (markdown): parsed in" in parse_log, parse_log[-2000:]

            children = psutil.Process(proc.pid).children(recursive=True)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(60) == 0, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
    time.sleep(1)
    assert not [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    # Dagster's runs are in PostgreSQL: the ingest runs of the sensor, all successful.
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    instance = DagsterInstance.from_config(str(home / "dagster"))
    try:
        _assert_postgres(instance)
        runs = instance.get_runs(RunsFilter(job_name="ingest_job"))
        assert len(runs) >= 3 and all(r.status == DagsterRunStatus.SUCCESS for r in runs), \
            [(r.run_id, r.status) for r in runs]
    finally:
        instance.dispose()

    # The index audit and the run purge on the deployment's stores (Milvus server, PostgreSQL).
    def cli(*args, **extra):
        res = subprocess.run([sys.executable, "-m", "mmrag.cli", *args, "--json"], env={**env, **extra}, cwd=REPO,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        return json.loads(res.stdout)

    assert cli("check")["before"]["clean"]
    assert cli("gc", "--runs", MMRAG_RUN_RETENTION_DAYS="0.000001")["runs"]["examined"] >= 3
    from dagster import AssetKey, AssetRecordsFilter

    instance = DagsterInstance.from_config(str(home / "dagster"))
    try:  # each file keeps its latest materialization
        for key in ("docs:pochards.md", "docs:grebes.md"):
            assert instance.fetch_materializations(AssetRecordsFilter(
                asset_key=AssetKey("lightrag_graph"), asset_partitions=[key]), limit=1).records, key
    finally:
        instance.dispose()
    print(f"two new files found in {found_s:.1f} s with 4 clients asking")
