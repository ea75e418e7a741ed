"""A shared index shows each caller only what it may see (issue: security). Unit checks of key
scopes and redaction, then one `mmrag up` over two sources with two API keys, a canary LLM API key
(the loopback model server demands it), a canary Milvus token and canary API keys:
- key A (finance only): hits, graph context, status and chat completions never show source B's
  text, entities or file names; asking for source B (or a file of it) gets 403;
- key B (every source) sees both, so the filter is not simply empty;
- images are served by row id from the blob store only; path tricks get 404;
- afterwards the canary strings appear nowhere under MMRAG_HOME (Dagster's home included) or in the
  service's logs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import REPO, SAMPLE
from helpers import wait_while_up
from openai_server import FakeOpenAIServer, lightrag_aware

from mmrag.redact import redact_url, scrub
from mmrag.serve.access import Forbidden, Scope, keyring, parse_keys, scope_of
from mmrag.serve.supervisor import free_port

pytestmark = pytest.mark.slow  # the fast loop: pytest -m "not slow"

CANARY_LLM = "canary-llm-7f3a9c1e55"
CANARY_MILVUS = "root:canary-milvus-2b8d4e"
KEY_A, KEY_B = "canary-key-a-91c2d7", "canary-key-b-40e6f1"


# -- units -------------------------------------------------------------------------------------------
def test_key_scopes():
    keys = parse_keys(f"{KEY_A}=finance, hr ;{KEY_B}=*")
    assert keys[KEY_A].sources == frozenset({"finance", "hr"}) and keys[KEY_B].everything
    assert scope_of(keys, f"Bearer {KEY_A}") is keys[KEY_A]
    assert scope_of(keys, KEY_A) is None and scope_of(keys, "Bearer nope") is None and scope_of(keys, None) is None
    assert scope_of({}, None).everything  # no key configured: open
    a = keys[KEY_A]
    assert a.sources_for(None) == ["finance", "hr"] and a.sources_for(["hr"]) == ["hr"]
    with pytest.raises(Forbidden, match="legal"):
        a.sources_for(["finance", "legal"])
    with pytest.raises(Forbidden, match="legal"):
        a.sources_for(None, files=["legal:contract.md"])
    assert a.sources_for(None, files=["contract.md"]) == ["finance", "hr"]  # a bare path: within the scope
    for bad in ("k1", "k1=", "=finance", "k1=a;k1=b"):
        with pytest.raises(ValueError, match="MMRAG_API_KEYS") as e:
            parse_keys(bad)
        assert "k1" not in str(e.value).replace("MMRAG_API_KEYS", "")  # the message never shows a key
    env = {"MMRAG_API_KEYS": f"{KEY_A}=finance", "MMRAG_API_KEY": KEY_B}
    assert keyring(env)[KEY_B].everything and keyring(env)[KEY_A] == Scope(frozenset({"finance"}), "key 1")


def test_redaction():
    assert redact_url("http://user:pw@gpu:8000/v1?api_key=abc&x=1") == "http://***@gpu:8000/v1?api_key=***&x=1"
    assert redact_url("http://gpu:8000/v1") == "http://gpu:8000/v1"
    env = {"MMRAG_LLM_API_KEY": CANARY_LLM, "MMRAG_MILVUS_TOKEN": CANARY_MILVUS,
           "MMRAG_DAGSTER_PG_URL": "postgresql://dagster:pg-secret-1@db/dagster"}
    text = (f"failed: POST http://u:p@h/v1 with {CANARY_LLM}; token {CANARY_MILVUS}; "
            "password canary-milvus-2b8d4e; pg-secret-1")
    out = scrub(text, env)
    assert CANARY_LLM not in out and "canary-milvus" not in out and "pg-secret-1" not in out and "u:p@" not in out


# -- through `mmrag up` ------------------------------------------------------------------------------
def _canaries() -> list[bytes]:
    return [s.encode() for s in (CANARY_LLM, CANARY_MILVUS.split(":")[1], KEY_A, KEY_B)]


def _files_with_canaries(*roots: Path) -> list[str]:
    found = []
    for root in roots:
        for p in [root] if root.is_file() else root.rglob("*"):
            if p.is_file() and not p.is_symlink():
                data = p.read_bytes()
                found += [f"{p}: {c.decode()}" for c in _canaries() if c in data]
    return found


def _entities(context: str) -> set[str]:
    """The entity names of a graph context (LightRAG's JSON lines, or mmrag's scoped ones)."""
    import json

    names = set()
    for line in context.splitlines():
        if line.startswith("{") and '"entity"' in line:
            names.add(json.loads(line)["entity"])
    return names


@pytest.fixture
def two_sources(tmp_path):
    finance, legal = tmp_path / "finance", tmp_path / "legal"
    finance.mkdir()
    legal.mkdir()
    (finance / "report.md").write_text("# Budget\n\nThe Budget Ledger counts every Mallard on the pond.\n")
    shutil.copy(SAMPLE / "example_image_01.png", finance / "chart.png")
    (legal / "contract.md").write_text("# Clause\n\nThe Clause protects every Mallard and the Quokka colony.\n")
    shutil.copy(SAMPLE / "qr_bill_example.jpg", legal / "scan.jpg")
    return finance, legal


def test_two_keys_see_only_their_sources_and_no_secret_is_kept(two_sources, tmp_path):
    finance, legal = two_sources
    home, log = tmp_path / "home", tmp_path / "up.log"
    ports = {"api": free_port(), "ui": free_port(), "dagster": free_port()}
    with FakeOpenAIServer(api_key=CANARY_LLM) as llm:
        llm.responder = lightrag_aware
        env = {k: v for k, v in os.environ.items() if not k.startswith("MMRAG_") and k != "DAGSTER_HOME"}
        env.update(MMRAG_HOME=str(home), MMRAG_CLIP_PRETRAINED="random", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO),
                   MMRAG_SENSOR_INTERVAL_S="3", MMRAG_LLM_URL=llm.base_url, MMRAG_LLM_MODEL="fake-llm",
                   MMRAG_VLM_MODEL="fake-vlm", MMRAG_LLM_API_KEY=CANARY_LLM, MMRAG_MILVUS_TOKEN=CANARY_MILVUS,
                   MMRAG_API_KEYS=f"{KEY_A}=finance;{KEY_B}=*")
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "mmrag.cli", "up", str(finance), str(legal),
                                     "--api-port", str(ports["api"]), "--ui-port", str(ports["ui"]),
                                     "--dagster-port", str(ports["dagster"])],
                                    env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        api = f"http://127.0.0.1:{ports['api']}"
        a, b = {"Authorization": f"Bearer {KEY_A}"}, {"Authorization": f"Bearer {KEY_B}"}

        def ask(headers, question, **extra):
            return httpx.post(f"{api}/v1/query", headers=headers, timeout=120,
                              json={"question": question, "top_k": 10, "mode": "mix", **extra})

        try:
            wait_while_up("the four files indexed", lambda: [f["status"] for src in httpx.get(
                f"{api}/v1/status", headers=b, timeout=60).json()["sources"].values()
                for f in src["files"]] == ["indexed"] * 4, 300, proc, log)
            question = "Is the Mallard of the Budget Ledger protected by the Clause of the Quokka colony?"
            both = ask(b, question).json()
            assert {h["source"] for h in both["hits"]} == {"finance", "legal"}
            assert {"Mallard", "Quokka", "Budget"} <= _entities(both["graph_context"]), both["graph_context"]

            # Key A: finance only, whatever it asks.
            res = ask(a, question)
            assert res.status_code == 200, res.text
            got = res.json()
            assert got["hits"] and {h["source"] for h in got["hits"]} == {"finance"}
            ctx = got["graph_context"]
            names = _entities(ctx)
            assert "Budget" in names and "Ledger" in names, ctx  # finance's own entities are there
            assert "Mallard" not in names, ctx  # held by both sources: its description merges legal's words
            for leak in ("legal", "contract.md", "Quokka", "Clause", "scan.jpg"):
                assert leak not in ctx, (leak, ctx)
            for forbidden in ({"sources": ["legal"]}, {"sources": ["finance", "legal"]},
                              {"files": ["legal:contract.md"]}):
                r = ask(a, "Quokka", **forbidden)
                assert r.status_code == 403 and "legal" in r.json()["error"]["message"], r.text
            assert ask(a, "Quokka", files=["contract.md"]).json()["hits"] == []  # a bare name: finance only
            chat = httpx.post(f"{api}/v1/chat/completions", headers=a, timeout=120, json={
                "model": "mmrag", "mode": "mix", "messages": [{"role": "user", "content": "Tell me about the Quokka"}]})
            assert chat.status_code == 200, chat.text
            body = chat.text
            assert "contract.md" not in body and "legal" not in body and "Quokka colony" not in body
            assert httpx.post(f"{api}/v1/chat/completions", headers=a, timeout=60, json={
                "messages": [{"role": "user", "content": "x"}], "sources": ["legal"]}).status_code == 403
            status = httpx.get(f"{api}/v1/status", headers=a, timeout=60).json()
            assert set(status["sources"]) == {"finance"}
            assert set(httpx.get(f"{api}/v1/status", headers=b, timeout=60).json()["sources"]) == {"finance", "legal"}
            assert httpx.get(f"{api}/v1/status", timeout=60).status_code == 401

            # Images: by row id, within the key's sources; nothing else reaches the file system.
            img_a = next(h for h in got["hits"] if h.get("image_url"))
            pic = httpx.get(f"{api}{img_a['image_url']}", headers=a, timeout=60)
            assert pic.status_code == 200 and pic.headers["content-type"] == "image/png" and len(pic.content) > 1000
            img_b = next(h for h in ask(b, "a scanned bill", sources=["legal"], modalities=["image"]).json()["hits"]
                         if h.get("image_url"))
            assert httpx.get(f"{api}{img_b['image_url']}", headers=a, timeout=60).status_code == 404
            assert httpx.get(f"{api}{img_b['image_url']}", headers=b, timeout=60).status_code == 200
            for attempt in ("/v1/images/..%2F..%2Fstate.sqlite", "/v1/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
                            "/v1/images/" + "0" * 40, "/v1/images/..", "/v1/images/%2Fetc%2Fpasswd",
                            f"/v1/images/{img_a['id']}%2F..%2F..%2Fstate.sqlite"):
                r = httpx.get(api + attempt, headers=a, timeout=60)
                assert r.status_code == 404, (attempt, r.status_code, r.text[:200])
            r = httpx.get(f"{api}/v1/images/../../../etc/passwd", headers=a, timeout=60)  # normalised by the client
            assert r.status_code == 404

            # Bounded requests.
            assert ask(a, "x" * 5000).status_code == 400
            assert ask(a, "ducks", top_k=1000).status_code == 400
            big = httpx.post(f"{api}/v1/query", headers=a, timeout=60,
                             content=b'{"question": "' + b"y" * 300_000 + b'"}')
            assert big.status_code == 413
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        assert llm.count("/v1/chat/completions") > 0  # the canary key was used, and accepted

    leaks = _files_with_canaries(home, log)
    assert not leaks, leaks


def test_requests_in_flight_are_bounded_per_key(tmp_path, monkeypatch):
    """The 5th concurrent request of one key gets 429 while another key is still served; a real app
    (create_app) with its query held open, no index needed."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from fastapi.testclient import TestClient

    from mmrag.config import Settings
    from mmrag.serve.api import MAX_PER_KEY, create_app

    monkeypatch.setenv("MMRAG_HOME", str(tmp_path / "home"))
    app = create_app(Settings.from_env(), warm=False, keys=parse_keys(f"{KEY_A}=finance;{KEY_B}=*"))
    release, entered = threading.Event(), threading.Semaphore(0)

    def held_query(question, **kw):
        entered.release()
        release.wait(30)
        return {"hits": [], "answer": None, "citations": [], "answer_status": None, "model": None,
                "mode": "naive", "graph_context": "", "sources": kw["scope"].sources_for(kw["sources"])}

    app.state.service.query = held_query
    client = TestClient(app)
    post = lambda key: client.post("/v1/query", json={"question": "ducks"},  # noqa: E731
                                   headers={"Authorization": f"Bearer {key}"})
    with ThreadPoolExecutor(MAX_PER_KEY + 1) as pool:
        held = [pool.submit(post, KEY_A) for _ in range(MAX_PER_KEY)]
        for _ in range(MAX_PER_KEY):
            assert entered.acquire(timeout=30)
        over = post(KEY_A)
        assert over.status_code == 429 and "in flight" in over.json()["error"]["message"]
        other = pool.submit(post, KEY_B)
        assert entered.acquire(timeout=30)  # key B is not held back by key A's requests
        release.set()
        assert [f.result().status_code for f in held] == [200] * MAX_PER_KEY
        assert other.result().status_code == 200
        assert held[0].result().json()["sources"] == ["finance"]
    assert post(KEY_A).status_code == 200  # slots come back
