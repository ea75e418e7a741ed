"""The query API (`mmrag api`, a real uvicorn server in a child process) over a real index: the same
JSON as the CLI, one-line 4xx errors, the API key, OpenAI's chat API (plain and streamed) through the
openai client, and `mmrag query` through the running server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import REPO, SAMPLE, copy_corpus
from helpers import api_server, free_port
from openai_server import FakeOpenAIServer, prompt_text

KEY = "test-key-0123456789"
ANSWER = "Dabbling ducks feed at the surface of the water [1]."


def _env(home: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMRAG_") and k != "DAGSTER_HOME"}
    env.update(MMRAG_HOME=str(home), DAGSTER_HOME=str(home / "dagster"), MMRAG_CLIP_PRETRAINED="random",
               HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), **extra)
    return env


def _cli(env: dict, *args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmrag.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


@pytest.fixture(scope="module")
def llm():
    with FakeOpenAIServer() as server:
        server.responder = lambda req: ANSWER if "CANNOT_ANSWER" in prompt_text(req) else "A description."
        yield server


@pytest.fixture(scope="module")
def api(tmp_path_factory, llm):
    tmp = tmp_path_factory.mktemp("api")
    home = tmp / "home"
    (home / "dagster").mkdir(parents=True)
    (home / "dagster" / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    root = copy_corpus(SAMPLE, tmp / "docs", ["duck.md", "table_06.html"])
    env = _env(home)
    res = _cli(env, "ingest", str(root), "--source", "docs", "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    before = _cli(env, "query", "Which ducks dabble?", "--top-k", "3", "--json")  # in-process, no server yet
    assert before.returncode == 0, before.stderr[-2000:]
    server_env = {**env, "MMRAG_API_KEY": KEY, "MMRAG_LLM_URL": llm.base_url, "MMRAG_LLM_MODEL": "fake-llm"}
    with api_server(server_env) as (url, proc):
        yield {"url": url, "proc": proc, "env": server_env, "home": home, "before": json.loads(before.stdout)}


def _post(api, path: str, body, key: str | None = KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(api["url"] + path, json=body, headers=headers, timeout=120)


def test_query_returns_the_cli_s_json(api):
    r = _post(api, "/v1/query", {"question": "Which ducks dabble?", "top_k": 3})
    assert r.status_code == 200
    assert r.json() == api["before"]
    st = httpx.get(api["url"] + "/v1/status", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert {f["path"] for f in st["sources"]["docs"]["files"]} == {"duck.md", "table_06.html"}


@pytest.mark.parametrize("body, says", [
    ({"question": ""}, "question"),
    ({"question": "ducks", "top_k": 0}, "top_k"),
    ({"question": "ducks", "top_k": 1000}, "top_k"),
    ({"question": "ducks", "mode": "sideways"}, "mode must be one of"),
    ({"question": "ducks", "modalities": ["smell"]}, "unknown modality"),
    ({"question": "ducks", "colour": "blue"}, "colour"),
    ({"question": "x" * 5000}, "question"),
    ({"top_k": 3}, "question"),
])
def test_bad_input_gets_a_4xx_with_one_line(api, body, says):
    r = _post(api, "/v1/query", body)
    assert r.status_code == 400, r.text
    msg = r.json()["error"]["message"]
    assert says in msg and "\n" not in msg


def test_the_api_key_is_required_but_not_for_healthz(api):
    assert _post(api, "/v1/query", {"question": "ducks"}, key=None).status_code == 401
    assert _post(api, "/v1/query", {"question": "ducks"}, key="wrong").status_code == 401
    assert httpx.get(api["url"] + "/v1/status").status_code == 401
    assert httpx.get(api["url"] + "/healthz").status_code == 200


def test_openai_chat_completions_plain_and_streamed(api, llm):
    from openai import OpenAI

    client = OpenAI(base_url=api["url"] + "/v1", api_key=KEY)
    assert [m.id for m in client.models.list().data] == ["mmrag"]
    resp = client.chat.completions.create(model="mmrag", messages=[{"role": "user", "content": "Which ducks dabble?"}])
    assert resp.choices[0].message.content == ANSWER
    extra = resp.model_extra["mmrag"]
    assert extra["answer_status"] == "answered" and extra["citations"][0]["n"] == 1
    assert extra["hits"][extra["citations"][0]["hit"]]["file"] in ("duck.md", "table_06.html")
    parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="mmrag", messages=[{"role": "user", "content": "Which ducks dabble?"}], stream=True)]
    assert "".join(parts) == ANSWER
    with pytest.raises(Exception, match="no user message"):
        client.chat.completions.create(model="mmrag", messages=[{"role": "system", "content": "hi"}])


def test_mmrag_query_uses_the_running_server(api):
    """The server holds the Milvus Lite index: `mmrag query` asks it instead of failing as busy."""
    env = {k: v for k, v in api["env"].items() if k != "MMRAG_LLM_URL"}
    t0 = time.monotonic()
    res = _cli(env, "query", "Which ducks dabble?", "--top-k", "3", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == api["before"]
    assert time.monotonic() - t0 < 30


def test_metrics_parse_as_prometheus_text_and_move_with_requests(api):
    from prometheus_client.parser import text_string_to_metric_families

    def scrape() -> dict:
        r = httpx.get(api["url"] + "/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.text[:300]
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(r.text) for s in family.samples}

    ok = ("mmrag_api_requests_total", (("method", "POST"), ("route", "/v1/query"), ("status", "200")))
    timed = ("mmrag_api_request_seconds_count", (("route", "/v1/query"),))
    auth = ("mmrag_api_errors_total", (("kind", "authentication_error"),))
    before = scrape()
    assert _post(api, "/v1/query", {"question": "Which ducks dabble?"}).status_code == 200
    assert _post(api, "/v1/query", {"question": "ducks"}, key="wrong").status_code == 401
    bad = _post(api, "/v1/query", {"question": "ducks", "top_k": 0})
    assert bad.status_code >= 400
    after = scrape()
    assert after[ok] == before.get(ok, 0) + 1 and after[timed] == before.get(timed, 0) + 3
    assert after[auth] == before.get(auth, 0) + 1
    errors = sum(v for (name, _), v in after.items() if name == "mmrag_api_errors_total")
    assert errors == sum(v for (name, _), v in before.items() if name == "mmrag_api_errors_total") + 2
    # The index as the manifest has it: both files indexed, their rows.
    assert after[("mmrag_files", (("state", "indexed"),))] == 2
    assert after[("mmrag_rows", (("modality", "text"),))] >= 2
    assert httpx.get(api["url"] + "/metrics", timeout=60).status_code == 401  # a key, as every route


def test_metrics_need_a_key_that_reads_every_source(tmp_path):
    from fastapi.testclient import TestClient

    from mmrag.config import Settings
    from mmrag.serve.access import Scope
    from mmrag.serve.api import create_app

    keys = {"all-key": Scope(None, label="all"), "docs-key": Scope(frozenset({"docs"}), label="docs")}
    app = create_app(Settings.from_env({"MMRAG_HOME": str(tmp_path / "home")}), warm=False, keys=keys)
    with TestClient(app) as client:
        assert client.get("/metrics", headers={"Authorization": "Bearer docs-key"}).status_code == 403
        r = client.get("/metrics", headers={"Authorization": "Bearer all-key"})
        assert r.status_code == 200 and 'mmrag_rows{modality="text"} 0.0' in r.text


def test_a_public_bind_needs_a_key_and_stopping_withdraws_the_server(api):
    env = {k: v for k, v in api["env"].items() if k != "MMRAG_API_KEY"}
    res = _cli(env, "api", "--host", "0.0.0.0", "--port", str(free_port()), timeout=60)
    assert res.returncode == 2 and "MMRAG_API_KEY" in res.stderr
    proc = api["proc"]
    assert (api["home"] / "api.json").exists()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0
    assert not (api["home"] / "api.json").exists()
    res = _cli(env, "query", "Which ducks dabble?", "--top-k", "3", "--json")  # in-process again
    assert res.returncode == 0 and json.loads(res.stdout) == api["before"]



def test_a_model_server_down_is_a_503_with_retry_after_not_a_500(tmp_path, monkeypatch):
    """While `up` restarts its embedding service (or a vLLM server is down), a query gets a 503 that says
    so, with Retry-After: the client's model call failed with a connection error after its retries."""
    from fastapi.testclient import TestClient

    from mmrag.config import Settings
    from mmrag.models.llm import LLMClient
    from mmrag.serve.api import create_app

    monkeypatch.setenv("MMRAG_HOME", str(tmp_path / "home"))
    app = create_app(Settings.from_env(), warm=False, keys={})
    down = LLMClient(f"http://127.0.0.1:{free_port()}/v1", "m", retries=0)  # nothing listens there

    def query(question, **kw):
        return down.embed([question], "all-MiniLM-L6-v2")

    app.state.service.query = query
    r = TestClient(app, raise_server_exceptions=False).post("/v1/query", json={"question": "ducks"})
    assert r.status_code == 503, r.text
    assert r.headers["Retry-After"] == "5"
    body = r.json()["error"]
    assert body["type"] == "model_unavailable" and "retry shortly" in body["message"] and "connection" in body["message"]
