"""Every path with the production text-embedding settings: a model server's `/v1/embeddings` (as vLLM
serves an embedding model), not sentence-transformers in the process.

    MMRAG_TEXT_EMBED_BACKEND=openai  MMRAG_TEXT_EMBED_MODEL=served-embedder
    MMRAG_TEXT_EMBED_URL=<server>    (or only MMRAG_LLM_URL: the factory falls back to the LLM server)

The server is the loopback fake (`tests/openai_server.py`), strict about model names: it serves
"served-embedder" and "fake-llm" and answers 404 to any other name. "served-embedder" is no
sentence-transformers model (offline, it cannot be loaded: `test_the_model_name_is_not_a_local_model`),
so a path that loaded sentence-transformers for text would fail; in this process the loader is also
replaced by one that fails the test.

A folder of three Markdown files is ingested once, by a `mmrag ingest` child process (Milvus Lite
locks its data dir for the process that opens it, until that process exits). The tests then run in
file order: first those that open the index in other processes (`mmrag query` as a child process, the
HTTP API), then those that open it in this one (in-process `mmrag query`, the chat page through
Streamlit's AppTest). `mmrag eval` indexes its own slice in its own data dir.
"""

from __future__ import annotations

import json
import signal
from types import SimpleNamespace

import httpx
import pytest
from conftest import REPO, isolated_env
from helpers import TEXT, api_server, cli_json, folder, store
from openai_server import FakeOpenAIServer, prompt_text
from test_api import _cli
from test_eval import SAMPLES, _slice
from test_ui import _env

pytestmark = pytest.mark.slow  # the fast loop: pytest -m "not slow"

EMBED_MODEL = "served-embedder"
LLM_MODEL = "fake-llm"
DOCS = {
    "pochards.md": ("# Pochards\n\nPochards dive to the bottom of lakes to feed on roots and snails.\n\n"
                    "## Winter\n\nIn winter the pochards gather in large rafts on open water.\n"),
    "eiders.md": "# Eiders\n\nEiders line their nests with soft down plucked from their own breasts.\n",
    "swans.md": "# Swans\n\nMute swans upend to graze on water plants in shallow rivers.\n",
}
# A sentence of each file that a chunk of it must contain.
SENTENCES = {
    "pochards.md": "Pochards dive to the bottom of lakes to feed on roots and snails.",
    "eiders.md": "Eiders line their nests with soft down plucked from their own breasts.",
    "swans.md": "Mute swans upend to graze on water plants in shallow rivers.",
}
ANSWER = "Pochards dive to the bottom of lakes for roots and snails [1]."


def words_embedding(text: str, dim: int) -> list[float]:
    """A bag of words as the server's embedding: each stemmed word (stop words dropped) adds to a
    dimension picked by its hash, so texts that share words are near (the default fake's vectors are
    hashes of the whole text, and the dense half of the ranking would be noise)."""
    import hashlib
    import math

    from mmrag.retrieval.query import lexical_terms

    vec = [0.0] * dim
    vec[0] = 0.05  # never the zero vector
    for term in lexical_terms(text):
        vec[1 + int.from_bytes(hashlib.sha256(term.encode()).digest()[:4], "big") % (dim - 1)] += 1.0
    norm = math.sqrt(sum(v * v for v in vec))
    return [v / norm for v in vec]


def embedded(server: FakeOpenAIServer) -> list[str]:
    """Every text the server was asked to embed (in order), after checking each request named the
    served model."""
    out = []
    for r in server.requests:
        if r.path == "/v1/embeddings":
            assert r.json["model"] == EMBED_MODEL, r.json
            out.extend([r.json["input"]] if isinstance(r.json["input"], str) else r.json["input"])
    return out


def the_question_was_embedded(server: FakeOpenAIServer, question: str) -> None:
    texts = embedded(server)
    assert question in texts, f"{question!r} was not sent to /v1/embeddings; sent: {texts}"


@pytest.fixture(scope="module")
def server():
    """The model server: an embedding model and a chat model, nothing else (strict names)."""
    with FakeOpenAIServer(models=(EMBED_MODEL, LLM_MODEL), strict_models=True, embedding_dim=64) as s:
        s.embedder = words_embedding
        yield s


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, server):
    """DOCS ingested by a `mmrag ingest` child process with the embedding server's settings; this
    process keeps the same MMRAG_* settings (isolated_env) for the in-process tests."""
    tmp = tmp_path_factory.mktemp("prod")
    root = folder(tmp / "docs", DOCS)
    with isolated_env(tmp) as mp:
        embed = {"MMRAG_TEXT_EMBED_BACKEND": "openai", "MMRAG_TEXT_EMBED_MODEL": EMBED_MODEL,
                 "MMRAG_TEXT_EMBED_URL": server.base_url}
        for k, v in embed.items():
            mp.setenv(k, v)
        env = _env(tmp / "home", tmp / "dagster", **embed)
        server.reset()
        res = _cli(env, "ingest", str(root), "--source", "docs", "--json")
        assert res.returncode == 0, res.stderr[-3000:]
        yield SimpleNamespace(tmp=tmp, root=root, env=env, out=json.loads(res.stdout),
                              ingest_texts=embedded(server), ingest_requests=server.count("/v1/embeddings"),
                              chat_requests=server.count("/v1/chat/completions"))


@pytest.fixture
def no_sentence_transformers(monkeypatch):
    """In this process, loading a sentence-transformers model fails the test."""
    from mmrag.models import embedders

    def refuse(path, *device):
        raise AssertionError(f"sentence-transformers was asked to load {path!r}")

    monkeypatch.setattr(embedders, "_load_sentence_transformer", refuse)


def test_the_model_name_is_not_a_local_model():
    """The premise: with sentence-transformers, "served-embedder" cannot be loaded (offline, no such
    model), so the paths below that work with it did not use sentence-transformers."""
    from mmrag.models.embedders import TextEmbedder

    with pytest.raises(OSError, match="served-embedder|huggingface"):
        TextEmbedder(EMBED_MODEL).embed(["a duck"])


def test_the_server_refuses_other_model_names(server):
    """The fake is strict: a request for another model gets a 404, so the requests it answered in
    the other tests named the served model."""
    r = httpx.post(f"{server.base_url}/embeddings", json={"model": "all-MiniLM-L6-v2", "input": ["x"]})
    assert r.status_code == 404 and "does not exist" in r.json()["error"]["message"]
    r = httpx.post(f"{server.base_url}/embeddings", json={"model": EMBED_MODEL, "input": ["x"]})
    assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == server.embedding_dim


def test_ingest_embeds_the_chunks_on_the_server(indexed):
    out = indexed.out
    assert out["indexed"] == len(DOCS) and out["failed"] == [] and out["skipped"] == [], out
    assert out["text_rows"] >= len(DOCS), out
    assert indexed.ingest_requests > 0 and indexed.chat_requests == 0  # no LLM configured: embeddings only
    for name, sentence in SENTENCES.items():
        assert any(sentence in t for t in indexed.ingest_texts), (name, indexed.ingest_texts)


def test_query_in_a_child_process_with_the_llm_server_s_url(indexed, server):
    """`mmrag query` as its own process, the embedding server given only as MMRAG_LLM_URL."""
    env = {k: v for k, v in indexed.env.items() if k != "MMRAG_TEXT_EMBED_URL"}
    env.update(MMRAG_LLM_URL=server.base_url, MMRAG_LLM_MODEL=LLM_MODEL)
    question = "Which ducks dive to the bottom of lakes for snails?"
    server.reset()
    res = _cli(env, "query", question, "--top-k", "3", "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    hits = json.loads(res.stdout)["hits"]
    assert hits and hits[0]["file"] == "pochards.md", hits
    the_question_was_embedded(server, question)
    assert server.count("/v1/chat/completions") == 0  # no --answer


def test_http_api_query(indexed, server):
    question = "What do eiders line their nests with?"
    with api_server(indexed.env) as (url, proc):
        server.reset()
        r = httpx.post(f"{url}/v1/query", json={"question": question, "top_k": 3}, timeout=120)
        assert r.status_code == 200, r.text
        hits = r.json()["hits"]
        assert hits and hits[0]["file"] == "eiders.md", hits
        the_question_was_embedded(server, question)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    assert not (indexed.tmp / "home" / "api.json").exists()


# -- from here on, this process opens the index ----------------------------------------------------
def test_the_index_holds_the_vectors_of_the_texts_the_server_embedded(indexed, server, no_sentence_transformers):
    st = store()
    rows = st.client.query(st._loaded(TEXT), filter="", output_fields=["text", "vector", "file_key"], limit=1000)
    assert {r["file_key"] for r in rows} == {f"docs:{n}" for n in DOCS}
    assert len(rows) == indexed.out["text_rows"]
    for r in rows:
        assert r["text"] in indexed.ingest_texts, r["text"]
        want = words_embedding(r["text"], server.embedding_dim)  # the row's vector is the server's
        assert max(abs(a - b) for a, b in zip(r["vector"], want)) < 1e-5


def test_query_in_process(indexed, server, capsys, no_sentence_transformers):
    question = "Where do mute swans graze on water plants?"
    server.reset()
    code, out = cli_json(capsys, "query", question, "--top-k", "3")
    assert code == 0 and out["hits"] and out["hits"][0]["file"] == "swans.md", out
    the_question_was_embedded(server, question)
    # The graph modes: LightRAG's vector search embeds through the same server.
    server.reset()
    code, mix = cli_json(capsys, "query", "Pochards", "--mode", "mix", "--top-k", "3")
    assert code == 0 and mix["mode"] == "mix" and mix["hits"], mix
    assert "docs:pochards.md" in mix["graph_context"], mix["graph_context"]
    # once for the hits, once for LightRAG's entity and relation search
    assert embedded(server).count("Pochards") >= 2, embedded(server)


def test_chat_page_with_the_llm_server_s_url(indexed, server, monkeypatch, no_sentence_transformers):
    """The chat page (Streamlit AppTest, in this process), the embedding server given only as
    MMRAG_LLM_URL, which also answers."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    monkeypatch.delenv("MMRAG_TEXT_EMBED_URL")
    monkeypatch.setenv("MMRAG_LLM_URL", server.base_url)
    monkeypatch.setenv("MMRAG_LLM_MODEL", LLM_MODEL)
    monkeypatch.setenv("MMRAG_LLM_RETRIES", "0")
    monkeypatch.setattr(server, "responder", lambda req: ANSWER)
    question = "How do pochards feed?"
    st.cache_resource.clear()  # the page's query service is built from the environment once per process
    try:
        at = AppTest.from_file(str(REPO / "mmrag" / "serve" / "chat.py"), default_timeout=120)
        at.run()
        assert not at.exception, at.exception
        server.reset()
        at.chat_input(key="question").set_value(question).run()
        assert not at.exception and not at.error, (at.exception, at.error)
        shown = [m.value for m in at.markdown]
        assert ANSWER in shown, shown
        assert any(f"answered by {LLM_MODEL}" in c.value for c in at.caption), [c.value for c in at.caption]
        first = next(m for m in shown if m.startswith("**[1]**"))
        assert "`docs:pochards.md`" in first and "cited" in first, shown
        the_question_was_embedded(server, question)
        (chat,) = server.chat_requests()
        assert chat["model"] == LLM_MODEL and question in prompt_text(chat)
    finally:
        st.cache_resource.clear()


def test_eval(mmrag_env, tmp_path, capsys, server, monkeypatch, no_sentence_transformers):
    """`mmrag eval` on test_eval's two-PDF slice, indexed and queried through the embedding server."""
    monkeypatch.setenv("MMRAG_TEXT_EMBED_BACKEND", "openai")
    monkeypatch.setenv("MMRAG_TEXT_EMBED_MODEL", EMBED_MODEL)
    monkeypatch.setenv("MMRAG_TEXT_EMBED_URL", server.base_url)
    folder = _slice(tmp_path)
    server.reset()
    code, res = cli_json(capsys, "eval", str(folder))
    assert code == 0, res
    assert res["questions"] == 4 and res["documents"] == 2, res
    # the recall the slice was built to give (test_eval, with MiniLM): the labelled-wrong page ranks second
    assert (res["recall@1"], res["recall@5"], res["recall@10"]) == (0.75, 1.0, 1.0), res
    texts = embedded(server)
    for _, question, pages, _ in SAMPLES:
        if pages:  # the answerable ones are retrieved (without an LLM the other is not asked)
            assert question in texts, question
    assert any("peregrine falcon dives" in t for t in texts)  # the documents' chunks, at indexing
