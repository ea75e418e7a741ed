"""`mmrag query` end to end: filters, graph modes, and answers against the loopback OpenAI server."""

from __future__ import annotations

import base64
import json

import pytest
from conftest import SAMPLE, copy_corpus, isolated_env, run_cli
from helpers import cli_json
from openai_server import image_parts, prompt_text

FILES = ["duck.md", "wiki_duck.html", "example_image_01.png", "xlsx_01.xlsx"]


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """One small index for the module (ingested without an LLM: structural graph)."""
    tmp = tmp_path_factory.mktemp("query")
    with isolated_env(tmp):
        root = copy_corpus(SAMPLE, tmp / "q", FILES)
        code, out = run_cli("ingest", str(root), "--source", "q")
        assert code == 0 and out["indexed"] == len(FILES), out
        yield root


def _llm(monkeypatch, server, vlm: bool = True):
    monkeypatch.setenv("MMRAG_LLM_URL", server.base_url)
    monkeypatch.setenv("MMRAG_LLM_MODEL", "fake-llm")
    monkeypatch.setenv("MMRAG_LLM_RETRIES", "1")
    if vlm:
        monkeypatch.setenv("MMRAG_VLM_MODEL", "fake-vlm")


def test_filters_modes_and_lineage(indexed, capsys):
    code, out = cli_json(capsys, "query", "ducks feeding in water", "--top-k", "4")
    assert code == 0 and out["answer"] is None and out["citations"] == [] and out["mode"] == "naive"
    assert {"duck.md", "wiki_duck.html"} & {h["file"] for h in out["hits"][:2]}
    for h in out["hits"]:
        assert {"file", "source", "page", "modality", "parser", "pipeline_version", "id"} <= set(h)
    _, only = cli_json(capsys, "query", "ducks feeding in water", "--file", "duck.md", "--no-images")
    assert only["hits"] and {h["file"] for h in only["hits"]} == {"duck.md"}
    _, imgs = cli_json(capsys, "query", "a picture", "--modality", "image")
    assert imgs["hits"] and {h["modality"] for h in imgs["hits"]} == {"image"} and all("image_path" in h for h in imgs["hits"])
    _, mix = cli_json(capsys, "query", "duck", "--mode", "mix", "--no-images")
    assert mix["mode"] == "mix" and "duck" in mix["graph_context"].lower()  # the structural graph's entities
    code, _ = cli_json(capsys, "query", "duck", "--source", "nope")
    assert code == 0


def test_answer_carries_context_images_and_citations(indexed, capsys, monkeypatch, openai_server):
    _llm(monkeypatch, openai_server)
    openai_server.responder = lambda req: "Dabbling ducks feed at the surface [1], as pictured [9][2]."
    code, out = cli_json(capsys, "query", "How do dabbling ducks feed?", "--answer", "--top-k", "3")
    assert code == 0 and out["answer_status"] == "answered" and out["model"] == "fake-vlm"
    req = openai_server.chat_requests()[-1]
    assert req["model"] == "fake-vlm"
    sent = prompt_text(req)
    assert out["hits"][0]["text"][:60] in sent and "How do dabbling ducks feed?" in sent
    urls = [p["image_url"]["url"] for p in image_parts(req)]
    assert urls and all(u.startswith("data:image/") for u in urls)
    image_hit = next(h for h in out["hits"] if h.get("image_path"))
    with open(image_hit["image_path"], "rb") as f:
        assert base64.b64decode(urls[0].split(",", 1)[1]) == f.read()
    assert [c["n"] for c in out["citations"]] == [1, 2]  # [9] is not a source: dropped
    assert out["citations"][0]["file"] == out["hits"][0]["file"] and out["citations"][1]["id"] == out["hits"][1]["id"]


def test_no_evidence_and_server_faults(indexed, capsys, monkeypatch, openai_server):
    _llm(monkeypatch, openai_server, vlm=False)
    openai_server.responder = lambda req: "CANNOT_ANSWER"
    code, out = cli_json(capsys, "query", "What is the boiling point of mercury?", "--answer")
    assert code == 0 and out["answer_status"] == "cannot_answer" and "cannot answer" in out["answer"].lower()
    assert out["citations"] == []
    from openai_server import Fault

    openai_server.fault_fn = lambda rec: Fault("status", 500)  # every request fails
    code, out = cli_json(capsys, "query", "How do dabbling ducks feed?", "--answer")
    assert code == 4 and out["answer_status"] == "error" and out["hits"]  # the hits still come back
    assert openai_server.base_url.split("/v1")[0] in out["answer"] and "500" in out["answer"]
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err


def test_answer_without_llm_shows_the_context(indexed, capsys):
    code, out = cli_json(capsys, "query", "How do dabbling ducks feed?", "--answer")
    assert code == 0 and out["answer_status"] == "no_llm" and "No LLM is configured" in out["answer"]
    assert json.dumps(out["hits"][0]["text"][:30])[1:-1] in json.dumps(out["answer"])
