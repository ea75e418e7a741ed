"""Model usage and cost (mmrag.models.usage): the meters, the price table, the manifest's sums, and
the end to end check: what mmrag reports per file, per run and per query equals what the loopback
model server counted in its replies."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from conftest import SAMPLE
from helpers import cli_json
from openai_server import lightrag_aware

from mmrag.models import usage
from mmrag.models.usage import DELETED, Prices, Usage, UsageMeter, summary

COUNTED = ("requests", "prompt_tokens", "completion_tokens", "images")


def _counts(d: dict) -> dict:
    return {k: d[k] for k in COUNTED}


def test_meters_follow_the_context_into_threads_and_tasks(openai_server, tmp_path):
    """Every reply's usage goes to each active meter, under the file of its context: in the calling
    thread, in a pool's threads (`in_context`), in asyncio tasks and the client's own threads."""
    from concurrent.futures import ThreadPoolExecutor

    from mmrag.models.llm import LLMClient

    image = tmp_path / "p.png"
    image.write_bytes((SAMPLE / "example_image_01.png").read_bytes())
    client = LLMClient(openai_server.base_url, "fake-llm", "fake-vlm", retries=0)
    outer, seen_elsewhere = UsageMeter(), UsageMeter()
    with usage.metered(outer):
        with usage.for_file("s:a"):
            client.complete("one two three")
            client.describe_image("what is it", image)
        with usage.for_file("s:b"), ThreadPoolExecutor(2) as pool:
            list(pool.map(usage.in_context(lambda t: client.complete(t)), ["x y", "z"]))
            client.embed(["alpha beta", "gamma"], "fake-embed")

        async def tasks():
            async def one(fk, text):
                with usage.for_file(fk):
                    await client.acomplete(text, system_prompt="be brief")
            await asyncio.gather(one("s:c", "c c c"), one("s:d", "d"))

        asyncio.run(tasks())
        t = threading.Thread(target=client.complete, args=("a new thread starts with an empty context",))
        t.start()
        t.join()
    with usage.metered(seen_elsewhere):
        pass
    client.complete("after the meter: not counted")

    rows = outer.snapshot()
    assert {k[0] for k in rows} == {"s:a", "s:b", "s:c", "s:d"}
    assert rows[("s:a", "fake-vlm", "chat")].images == 1
    assert rows[("s:b", "fake-embed", "embed")].prompt_tokens == 3
    # the server's replies but the last two (the new thread's, the one after the meter)
    n = len(openai_server.requests)
    expected = {k: v for k, v in openai_server.usage_total().items() if k != "by_model"}
    for k, v in openai_server.usage_total(since=n - 2).items():
        if k != "by_model":
            expected[k] -= v
    total = outer.total()
    assert {k: getattr(total, k) for k in COUNTED} == expected
    assert total.latency_ms > 0 and not seen_elsewhere
    client.close()


def test_prices_turn_usage_into_cost(tmp_path):
    table = {"llm": {"prompt": 2.0, "completion": 8.0}, "vlm": {"prompt": 1.0, "completion": 1.0, "image": 0.01}}
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(table))
    for spec in (json.dumps(table), str(path)):
        prices = Prices.parse(spec)
        rows = {("s:a", "llm", "chat"): Usage(2, 1_000_000, 500_000, cache_hits=1, saved_prompt_tokens=500_000),
                ("s:b", "vlm", "chat"): Usage(1, 1000, 1000, images=3),
                ("", "emb", "embed"): Usage(4, 400)}
        out = summary(rows, prices)
        assert (out["prompt_tokens"], out["completion_tokens"], out["total_tokens"]) == (1_001_400, 501_000, 1_502_400)
        assert out["requests"] == 7 and out["images"] == 3 and out["cache_hits"] == 1
        assert out["cost"] == {"usd": pytest.approx(2 + 4 + 0.002 + 0.03), "saved_usd": pytest.approx(1.0),
                               "by_model": {"llm": 6.0, "vlm": pytest.approx(0.032)}, "unpriced": ["emb"]}
    assert not Prices.parse("") and "cost" not in summary({}, Prices.parse(""))
    for bad in ("{nope", '["llm"]', '{"llm": 3}', '{"llm": {"input": 1}}', str(tmp_path / "missing.json")):
        with pytest.raises(ValueError, match="MMRAG_PRICES"):
            Prices.parse(bad)


def test_manifest_sums_are_cumulative_and_a_deleted_file_leaves_its_cost(tmp_path):
    from mmrag.manifest import Manifest

    m = Manifest(tmp_path / "state.sqlite")
    m.add_usage({("docs:a", "llm", "chat"): Usage(1, 10, 5, latency_ms=3.0), ("docs:b", "llm", "chat"): Usage(1, 1, 1),
                 ("Docs:c", "llm", "chat"): Usage(1, 7, 7), ("docs:a", "vlm", "chat"): Usage()})  # empty rows skipped
    m.add_usage({("docs:a", "llm", "chat"): Usage(2, 20, 10, cache_hits=3)})
    assert m.usage(file_keys=["docs:a"]) == {("docs:a", "llm", "chat"): Usage(3, 30, 15, 0, 3.0, 3)}
    assert set(m.usage(sources=["docs"])) == {("docs:a", "llm", "chat"), ("docs:b", "llm", "chat")}
    m.delete("docs:a")
    m.commit_graph("ws", "t1", set(), {}, deletes=["docs:b"])
    assert m.usage() == {("Docs:c", "llm", "chat"): Usage(1, 7, 7),
                         (DELETED, "llm", "chat"): Usage(4, 31, 16, 0, 3.0, 3)}


@pytest.mark.slow
def test_usage_per_file_run_and_query_equals_what_the_server_counted(mmrag_env, tmp_path, capsys, openai_server,
                                                                    monkeypatch):
    """An ingest with the model server: the files' sums in the manifest, the run's tags and its steps'
    metadata, `mmrag status` and a query's `usage` each equal the usage the server put in its replies;
    a second ingest of unchanged files asks nothing and adds nothing; a forced re-run of a file takes
    its description from the cache and counts a cache hit with the tokens it saved."""
    import shutil

    from dagster import DagsterEventType, DagsterInstance
    from fastapi.testclient import TestClient

    from mmrag.config import Settings
    from mmrag.manifest import Manifest
    from mmrag.serve.api import create_app
    from mmrag_assets._meta import USAGE_TAG

    openai_server.responder = lightrag_aware
    prices = {"fake-llm": {"prompt": 0.5, "completion": 1.5}, "fake-vlm": {"prompt": 1, "completion": 2, "image": 0.01}}
    for var, value in {"MMRAG_LLM_URL": openai_server.base_url, "MMRAG_LLM_MODEL": "fake-llm",
                       "MMRAG_VLM_MODEL": "fake-vlm", "MMRAG_LLM_RETRIES": "0",
                       "MMRAG_PRICES": json.dumps(prices)}.items():
        monkeypatch.setenv(var, value)
    root = tmp_path / "docs"
    root.mkdir()
    shutil.copy(SAMPLE / "example_image_01.png", root / "chart.png")
    (root / "notes.md").write_text("# Mallards\n\nMallards and Teals feed in Shallow water near Oxford.\n\n"
                                   "# Eiders\n\nEiders dive in Northern seas off Norway.\n")
    code, out = cli_json(capsys, "ingest", str(root), "--source", "docs")
    assert code == 0 and out["indexed"] == 2, out
    served = openai_server.usage_total()
    assert served["by_model"]["fake-vlm"]["images"] == 1 and served["by_model"]["fake-llm"]["requests"] > 0

    # per file: the manifest's rows, all of them a file's (no shared work with a local embedder)
    manifest = Manifest(Settings.from_env().state_path)
    rows = manifest.usage()
    assert {k[0] for k in rows} == {"docs:chart.png", "docs:notes.md"}, rows
    assert _counts(summary(rows)) == _counts(served)
    for model, counts in served["by_model"].items():
        assert _counts(summary(rows)["by_model"][model]) == counts
    assert rows[("docs:chart.png", "fake-vlm", "chat")].images == 1
    assert rows[("docs:notes.md", "fake-llm", "chat")].requests > 0  # LightRAG's extraction

    # per run: the run's tags and its steps' metadata
    instance = DagsterInstance.get()
    runs = [r for r in instance.get_runs() if any(t.startswith(USAGE_TAG) for t in r.tags)]
    assert len(runs) == 1
    tags = runs[0].tags
    assert {k: int(tags[USAGE_TAG + k]) for k in COUNTED} == _counts(served)
    cost = sum((c["prompt_tokens"] * prices[m]["prompt"] + c["completion_tokens"] * prices[m]["completion"]) / 1e6
               + c["images"] * prices[m].get("image", 0) for m, c in served["by_model"].items())
    assert float(tags[USAGE_TAG + "cost_usd"]) == pytest.approx(cost, abs=1e-5)
    step_meta: dict[str, dict] = {}
    for rec in instance.get_records_for_run(runs[0].run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records:
        mat = rec.event_log_entry.asset_materialization
        step_meta.setdefault(mat.asset_key.to_user_string(), {k: v.value for k, v in mat.metadata.items()})
    assert {"modal_descriptions", "lightrag_graph"} <= {a for a, m in step_meta.items() if "usage_requests" in m}
    assert {k: sum(m.get(f"usage_{k}", 0) for m in step_meta.values()) for k in COUNTED} == _counts(served)

    # mmrag status: the totals, and the cost under MMRAG_PRICES
    code, status = cli_json(capsys, "status")
    assert _counts(status["usage"]) == _counts(served) and status["usage"]["cost"]["usd"] == pytest.approx(cost, abs=1e-5)
    files = {f["path"]: f["usage"] for f in status["sources"]["docs"]["files"]}
    assert files["chart.png"]["images"] == 1 and _counts(status["sources"]["docs"]["usage"]) == _counts(served)
    from mmrag.cli import main

    capsys.readouterr()
    assert main(["status"]) == 0
    text = capsys.readouterr().out
    assert f"model usage: {served['requests']} requests, {served['prompt_tokens']} prompt" in text
    assert "  fake-vlm: 1 requests" in text and f"cost: ${cost:.4f}" in text

    # nothing changed: no request, nothing added
    code, _ = cli_json(capsys, "ingest", str(root), "--source", "docs")
    assert code == 0 and openai_server.usage_total() == served and manifest.usage() == rows

    # per query: the reply's usage is what the server counted for that question
    before = len(openai_server.requests)
    code, q = cli_json(capsys, "query", "Where do Mallards feed?", "--answer", "--mode", "mix")
    asked = openai_server.usage_total(since=before)
    assert code == 0 and q["answer_status"] == "answered" and asked["requests"] >= 2  # keywords + answer
    assert _counts(q["usage"]) == _counts(asked)
    assert q["usage"]["total_tokens"] == asked["prompt_tokens"] + asked["completion_tokens"]
    assert set(q["usage"]["by_model"]) == set(asked["by_model"]) and "cost" in q["usage"]
    before = len(openai_server.requests)
    with TestClient(create_app(warm=False)) as api:
        r = api.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Where do Eiders dive?"}]})
    asked = openai_server.usage_total(since=before)
    u = r.json()["usage"]
    assert r.status_code == 200 and asked["requests"] == 1  # the answer (naive mode: no keywords)
    assert (u["prompt_tokens"], u["completion_tokens"], u["total_tokens"]) == \
           (asked["prompt_tokens"], asked["completion_tokens"], asked["prompt_tokens"] + asked["completion_tokens"])
    assert manifest.usage() == rows  # queries are not a file's cost

    # a forced re-run of the picture: the description comes from the cache, counted with what it saved
    from mmrag.definitions import defs
    from mmrag.orchestration.planner import range_tags

    before = len(openai_server.requests)
    key = "docs:chart.png"
    assert defs.resolve_job_def("ingest_job").execute_in_process(instance=instance, tags=range_tags(key, key)).success
    assert openai_server.usage_total(since=before)["requests"] == 0
    again = manifest.usage(file_keys=[key])[(key, "fake-vlm", "chat")]
    first = rows[(key, "fake-vlm", "chat")]
    assert (again.requests, again.cache_hits) == (first.requests, 1)
    assert (again.saved_prompt_tokens, again.saved_completion_tokens) == (first.prompt_tokens, first.completion_tokens)
    extracted = manifest.usage(file_keys=[key])[(key, "fake-llm", "chat")]
    assert extracted.requests == rows[(key, "fake-llm", "chat")].requests and extracted.cache_hits >= 1  # LightRAG's cache

    # a deleted file's rows go; the totals keep what it cost
    (root / "notes.md").unlink()
    code, _ = cli_json(capsys, "ingest", str(root), "--source", "docs")
    after = manifest.usage()
    assert code == 0 and not any(k[0] == "docs:notes.md" for k in after)
    assert _counts(summary(after)) == _counts(served)
    code, status = cli_json(capsys, "status")
    assert _counts(status["usage"]) == _counts(served)
