"""The chat page, started by `mmrag ui` (Streamlit).

Sidebar: sources, retrieval mode, top-k, modality filter, "answer with the LLM". Main: a chat input;
each question goes through the query service the API runs (`mmrag.serve.service.QueryService.ask`:
the same request checks, scope, retrieval and answer), then shows the answer and the hits, numbered
as the answer cites them: file, source, page or time range, modality, score, a text snippet, and the image of figure/picture/frame hits. Models, the Milvus
client and the graph are opened once per server process (`mmrag.models.factory`); with Milvus Lite this
process then holds the index's lock until it exits, so stop the page before running `mmrag ingest`.

With API keys configured (MMRAG_API_KEYS / MMRAG_API_KEY, `mmrag.serve.access`) the page asks for a key
and shows only that key's sources: every search (graph context included) is scoped to them.

Stable hooks for tests: the title "mmrag chat", containers with the keys `turn-N`, `answer-N`,
`hit-N-M` (CSS classes `st-key-...`), and the text "no LLM configured".
"""

from __future__ import annotations

import threading
from pathlib import Path

import streamlit as st

from mmrag.config import Settings
from mmrag.index.milvus_store import IndexBusyError
from mmrag.redact import redact_url, scrub
from mmrag.retrieval.answer import Answer, where
from mmrag.retrieval.query import MODALITIES, MODES
from mmrag.serve.access import OPEN, Forbidden, Scope, keyring, scope_of
from mmrag.serve.service import QueryError, QueryService

TITLE = "mmrag chat"
NO_LLM = "no LLM configured: showing retrieved context"
SNIPPET = 400


@st.cache_resource(show_spinner=False)
def service() -> QueryService:
    """The page's query service: the API's, with its request checks; its models, Milvus client and
    graph come from `mmrag.models.factory`, built once per server process."""
    return QueryService(Settings.from_env())


def llm():
    return service().llm()


@st.cache_resource(show_spinner=False)
def warm_up() -> threading.Thread:
    """Load the models in the background when the page first opens, so the first question does not
    wait for them (a question asked meanwhile waits for the same load, nothing loads twice)."""
    svc = service()  # here, with the script's context; the thread only loads models

    def load():
        try:
            svc.warm_up()
        except Exception:  # noqa: BLE001 - the question that needs the model reports it
            pass

    th = threading.Thread(target=load, name="mmrag-warm-up", daemon=True)
    th.start()
    return th


def sources(settings: Settings) -> list[str]:
    from mmrag.manifest import Manifest

    try:
        return sorted(Manifest(settings.state_path).sources())
    except Exception:  # noqa: BLE001 - no index yet: nothing to choose
        return []


def ask(question: str, opts: dict, scope: Scope = OPEN) -> dict:
    """One turn: {"question", "hits", "graph_context", "answer": Answer | None, "error": str}, through
    the query service (`QueryService.ask`: the API's checks, scope and answer)."""
    turn = {"question": question, "hits": [], "graph_context": "", "answer": None, "error": "", **opts}
    use_llm = bool(opts["use_llm"] and llm() is not None)
    try:
        with st.spinner("Searching…" if not use_llm else "Searching and writing the answer…"):
            res = service().ask(question, top_k=opts["top_k"], mode=opts["mode"], sources=opts["sources"] or None,
                                modalities=opts["modalities"] or None, answer=use_llm, scope=scope)
    except IndexBusyError as e:
        turn["error"] = f"The index is busy: {e}"
        return turn
    except (Forbidden, QueryError) as e:
        turn["error"] = str(e)
        return turn
    except Exception as e:  # noqa: BLE001 - shown on the page, never as a traceback
        turn["error"] = scrub(f"Search failed: {type(e).__name__}: {' '.join(str(e).split())}")
        return turn
    turn["hits"], turn["graph_context"], turn["answer"] = res.hits, res.graph_context, res.answer
    turn["rerank"], turn["pages"] = res.rerank, res.pages
    return turn


def rerank_note(info: dict | None) -> str:
    """' · reranked by M (N candidates, X ms)', or what went wrong; '' when the stage is off."""
    if not info:
        return ""
    if info.get("error"):
        return f" · rerank by {info['model']} failed, fused order kept ({info['error']})"
    return f" · reranked by {info['model']} ({info['candidates']} candidates, {info['ms']:.0f} ms)"


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
            st.caption(f"{len(hits)} hits · mode {turn['mode']} · top-k {turn['top_k']} · {filters}"
                       + rerank_note(turn.get("rerank")))
            if turn.get("pages"):
                st.caption("best pages: " + ", ".join(f"{p['file']} p.{p['page'] + 1}" for p in turn["pages"][:5]))
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
        turns.append(ask(question.strip(), opts, scope))
        show_turn(len(turns), turns[-1])


main()
