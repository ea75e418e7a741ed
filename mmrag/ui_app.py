"""The chat page, started by `mmrag ui` (Streamlit).

Sidebar: sources, retrieval mode, top-k, modality filter, "answer with the LLM". Main: a chat input;
each question runs `mmrag.query.retrieve` and, with an LLM configured, `mmrag.answer.answer`, then
shows the answer and the hits, numbered as the answer cites them: file, source, page or time range,
modality, score, a text snippet, and the image of figure/picture/frame hits. Models, the Milvus
client and the graph are opened once per server process (`st.cache_resource`); with Milvus Lite this
process then holds the index's lock until it exits, so stop the page before running `mmrag ingest`.

With API keys configured (MMRAG_API_KEYS / MMRAG_API_KEY, `mmrag.access`) the page asks for a key
and shows only that key's sources: every search (graph context included) is scoped to them.

Stable hooks for tests: the title "mmrag chat", containers with the keys `turn-N`, `answer-N`,
`hit-N-M` (CSS classes `st-key-...`), and the text "no LLM configured".
"""

from __future__ import annotations

import threading
from pathlib import Path

import streamlit as st

from mmrag.access import OPEN, Forbidden, Scope, keyring, scope_of
from mmrag.answer import Answer, answer, where
from mmrag.config import Settings
from mmrag.milvus_store import IndexBusyError
from mmrag.query import MODALITIES, MODES, open_graph, open_store, retrieve
from mmrag.redact import redact_url, scrub

TITLE = "mmrag chat"
NO_LLM = "no LLM configured: showing retrieved context"
SNIPPET = 400


@st.cache_resource(show_spinner=False)
def text_embedder():
    from mmrag.embedders import TextEmbedder

    emb = TextEmbedder(Settings.from_env().text_embed_model)
    emb.dim  # noqa: B018 - load the model here, under the cache's lock, so it loads once
    return emb


@st.cache_resource(show_spinner=False)
def image_embedder():
    from mmrag.embedders import ImageEmbedder

    s = Settings.from_env()
    emb = ImageEmbedder(s.clip_model, s.clip_pretrained, cache_dir=s.cache_dir)
    emb.enabled  # noqa: B018 - load CLIP (or note why not) here, once
    return emb


@st.cache_resource(show_spinner=False)
def store():
    return open_store(Settings.from_env())  # raises IndexBusyError (not cached) while another process holds Lite


@st.cache_resource(show_spinner=False)
def llm():
    from mmrag.llm import LLMClient

    return LLMClient.from_settings(Settings.from_env())


@st.cache_resource(show_spinner=False)
def graph():
    return open_graph(Settings.from_env(), text_embedder(), llm())


@st.cache_resource(show_spinner=False)
def warm_up() -> threading.Thread:
    """Load the models in the background when the page first opens, so the first question does not
    wait for them (a question asked meanwhile waits on the same cache entries, nothing loads twice)."""
    def load():
        try:
            text_embedder()
            image_embedder()
        except Exception:  # noqa: BLE001 - the question that needs the model reports it
            pass

    from streamlit.runtime.scriptrunner import add_script_run_ctx, get_script_run_ctx

    th = threading.Thread(target=load, name="mmrag-warm-up", daemon=True)
    add_script_run_ctx(th, get_script_run_ctx())  # the caches want a context (no elements are drawn)
    th.start()
    return th


def sources(settings: Settings) -> list[str]:
    from mmrag.state import Manifest

    try:
        return sorted(Manifest(settings.state_path).sources())
    except Exception:  # noqa: BLE001 - no index yet: nothing to choose
        return []


def ask(settings: Settings, question: str, opts: dict, scope: Scope = OPEN) -> dict:
    """One turn: {"question", "hits", "graph_context", "answer": Answer | None, "error": str}."""
    turn = {"question": question, "hits": [], "graph_context": "", "answer": None, "error": "", **opts}
    try:
        with st.spinner("Searching…"):
            res = retrieve(settings, question, top_k=opts["top_k"], mode=opts["mode"],
                           sources=scope.sources_for(opts["sources"] or None), modalities=opts["modalities"] or None,
                           text_embedder=text_embedder(), image_embedder=image_embedder(), store=store(),
                           graph=graph() if opts["mode"] != "naive" else None)
        turn["hits"], turn["graph_context"] = res["hits"], res["graph_context"]
    except IndexBusyError as e:
        turn["error"] = f"The index is busy: {e}"
        return turn
    except Forbidden as e:
        turn["error"] = str(e)
        return turn
    except Exception as e:  # noqa: BLE001 - shown on the page, never as a traceback
        turn["error"] = scrub(f"Search failed: {type(e).__name__}: {' '.join(str(e).split())}")
        return turn
    if opts["use_llm"] and llm() is not None:
        with st.spinner("Writing the answer…"):
            turn["answer"] = answer(question, turn["hits"], llm(), graph_context=turn["graph_context"])
    return turn


def show_answer(turn: dict) -> None:
    ans: Answer | None = turn["answer"]
    if ans is None:
        st.info(NO_LLM if llm() is None else "LLM answer turned off: showing retrieved context")
    elif ans.status == "answered":
        st.markdown(ans.text)
        if ans.model:
            st.caption(f"answered by {ans.model}" + (f" with {len(ans.images)} image(s)" if ans.images else ""))
    elif ans.status == "error":
        st.error(ans.text)
    elif ans.status == "no_llm":
        st.info(NO_LLM)
    else:
        st.warning(ans.text)


def show_hit(t: int, n: int, hit: dict, cited: bool) -> None:
    with st.container(border=True, key=f"hit-{t}-{n}"):
        place = where(hit)
        head = [f"**[{n}]** `{hit['source']}:{hit['file']}`", place, hit.get("modality", "text"),
                f"score {hit['score']:.3f}"]
        st.markdown(" · ".join(p for p in head if p) + ("  :green-badge[cited]" if cited else ""))
        text = " ".join((hit.get("text") or "").split())
        if text:
            st.text(text if len(text) <= SNIPPET else text[:SNIPPET] + " …")
        path = hit.get("image_path")
        if path and Path(path).is_file():
            st.image(path, caption=f"{hit['file']} {place}".strip(), width=320)
        elif path:
            st.caption(f"image not on this machine: {path}")


def show_turn(t: int, turn: dict) -> None:
    with st.container(key=f"turn-{t}"):
        with st.chat_message("user"):
            st.text(turn["question"])
        with st.chat_message("assistant"):
            if turn["error"]:
                st.error(turn["error"])
                return
            with st.container(key=f"answer-{t}"):
                show_answer(turn)
            hits = turn["hits"]
            if not hits:
                st.warning("Nothing in the index matches the question.")
                return
            cited = {c["hit"] for c in (turn["answer"].citations if turn["answer"] else [])}
            filters = ", ".join(turn["sources"]) or "all sources"
            st.caption(f"{len(hits)} hits · mode {turn['mode']} · top-k {turn['top_k']} · {filters}")
            if turn["graph_context"]:
                with st.expander(f"graph context ({turn['mode']})"):
                    st.text(turn["graph_context"])
            for n, hit in enumerate(hits, 1):
                show_hit(t, n, hit, n - 1 in cited)


def main() -> None:
    st.set_page_config(page_title=TITLE, layout="wide")
    settings = Settings.from_env()
    warm_up()
    client = llm()
    keys = keyring()
    with st.sidebar:
        scope = OPEN
        if keys:
            given = st.text_input("API key", type="password", key="api_key",
                                  help="this index is shared: each key reads its own sources")
            scope = scope_of(keys, f"Bearer {given}") if given else None
            if scope is None:
                st.warning("Enter a valid API key to search." if given else "Enter your API key to search.")
        st.header("Search")
        readable = [s for s in sources(settings) if scope is not None and scope.allows(s)]
        opts = {
            "sources": st.multiselect("Sources", readable, key="sources", placeholder="all sources"),
            "mode": st.selectbox("Mode", MODES, key="mode",
                                 help="naive: vector + BM25 chunks; local / global / hybrid / mix add LightRAG graph context"),
            "top_k": st.slider("Top-k", 1, 20, 5, key="top_k"),
            "modalities": st.multiselect("Modalities", MODALITIES, key="modalities", placeholder="all modalities"),
            "use_llm": st.toggle("Answer with the LLM", value=client is not None, disabled=client is None,
                                 key="use_llm"),
        }
        if client is None:
            st.caption("No LLM configured (set MMRAG_LLM_URL): the page shows the retrieved context.")
        else:
            st.caption(f"LLM: {client.model or 'default'} at {redact_url(str(client.base_url))}")
        st.caption(f"Index: {redact_url(settings.resolved_milvus_uri)}")
        if st.button("Clear chat", key="clear"):
            st.session_state.turns = []

    st.title(TITLE)
    turns: list[dict] = st.session_state.setdefault("turns", [])
    for t, turn in enumerate(turns, 1):
        show_turn(t, turn)
    question = st.chat_input("Ask about the indexed files", key="question", disabled=scope is None)
    if question and question.strip() and scope is not None:
        turns.append(ask(settings, question.strip(), opts, scope))
        show_turn(len(turns), turns[-1])


main()
