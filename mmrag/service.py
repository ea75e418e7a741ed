"""What a query server holds and answers, without HTTP: models, the Milvus client and the graph,
loaded once per process and shared by every request; the JSON of `mmrag query --json` and
`mmrag status --json`. The CLI uses the same functions in-process when no server is up.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from mmrag.access import OPEN, Scope
from mmrag.config import Settings

DISCOVERY = "api.json"  # under MMRAG_HOME: where the running query server listens


class QueryError(ValueError):
    """A request the index cannot serve as asked (bad mode, top_k, modality...): a 4xx."""


MAX_TOP_K = 100


def check_request(question: str, top_k: int, mode: str, modalities) -> None:
    from mmrag.query import MODALITIES, MODES

    if not isinstance(question, str) or not question.strip():
        raise QueryError("question must be a non-empty string")
    if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= MAX_TOP_K:
        raise QueryError(f"top_k must be an integer from 1 to {MAX_TOP_K}")
    if mode not in MODES:
        raise QueryError(f"mode must be one of {', '.join(MODES)}")
    bad = [m for m in modalities or [] if m not in MODALITIES]
    if bad:
        raise QueryError(f"unknown modality {bad[0]!r}: one of {', '.join(MODALITIES)}")


class QueryService:
    """Everything a query needs, opened on first use and kept: one per server process."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings.from_env()
        self._lock = threading.Lock()
        self._text = self._image = self._store = self._graph = None
        self._llm: Any = ...  # ... = not built yet (None = no LLM configured)

    # -- resources (built once, under one lock) --------------------------------------------------
    def text_embedder(self):
        with self._lock:
            if self._text is None:
                from mmrag.embedders import TextEmbedder

                emb = TextEmbedder(self.settings.text_embed_model)
                emb.dim  # noqa: B018 - load now
                self._text = emb
            return self._text

    def image_embedder(self):
        with self._lock:
            if self._image is None:
                from mmrag.embedders import ImageEmbedder

                s = self.settings
                emb = ImageEmbedder(s.clip_model, s.clip_pretrained, cache_dir=s.cache_dir)
                emb.enabled  # noqa: B018 - load CLIP (or note why not) now
                self._image = emb
            return self._image

    def store(self):
        with self._lock:
            if self._store is None:
                from mmrag.query import open_store

                self._store = open_store(self.settings)
            return self._store

    def llm(self):
        with self._lock:
            if self._llm is ...:
                from mmrag.llm import LLMClient

                self._llm = LLMClient.from_settings(self.settings)
            return self._llm

    def graph(self):
        text, llm = self.text_embedder(), self.llm()
        with self._lock:
            if self._graph is None:
                from mmrag.query import open_graph

                self._graph = open_graph(self.settings, text, llm)
            return self._graph

    def warm_up(self) -> None:
        self.text_embedder()
        self.image_embedder()
        self.store()

    # -- requests --------------------------------------------------------------------------------
    def query(self, question: str, *, top_k: int = 5, mode: str = "naive", sources=None, files=None,
              modalities=None, answer: bool = False, images: bool = True, scope: Scope = OPEN) -> dict:
        """The object `mmrag query --json` prints. `scope`: the sources the caller may read
        (`Forbidden` for a source or file outside it; no source named = every source in it)."""
        from mmrag.answer import answer as write_answer
        from mmrag.query import retrieve

        check_request(question, top_k, mode, modalities)
        sources = scope.sources_for(sources, files)
        res = retrieve(self.settings, question, top_k=top_k, mode=mode, sources=sources or None,
                       files=files or None, modalities=modalities or None, with_images=images,
                       text_embedder=self.text_embedder(), image_embedder=self.image_embedder() if images else None,
                       store=self.store(), graph=self.graph() if mode != "naive" else None)
        ans = write_answer(question, res["hits"], self.llm(), graph_context=res["graph_context"]) if answer else None
        return {"hits": res["hits"], "answer": ans.text if ans else None, "citations": ans.citations if ans else [],
                "answer_status": ans.status if ans else None, "model": ans.model if ans else None,
                "mode": mode, "graph_context": res["graph_context"]}


def status_json(settings: Settings, scope: Scope = OPEN) -> dict:
    """The object `mmrag status --json` prints: per source its files, rows, stale and deleted files;
    only the sources `scope` may read."""
    from mmrag.state import Manifest
    from mmrag.sync import plan_sync, scan_root

    manifest = Manifest(settings.state_path)
    fp = settings.fingerprint()
    sources = {}
    for name, root in manifest.sources().items():
        if not scope.allows(name):
            continue
        recs = manifest.all(name)
        scan = scan_root(root, name)
        plan = plan_sync(scan, {r.file_key: r for r in recs}, {r.file_key for r in recs}, fingerprint=fp)
        sources[name] = {
            "root": root, "root_error": scan.error,
            "files": [{"path": r.rel_path, "status": r.status, "reason": r.reason, "text_rows": r.text_rows,
                       "image_rows": r.image_rows, "parser": r.parser,
                       # failed/partial: "content" waits for new bytes or config, "transient" is retried
                       "failure_kind": r.failure_kind if r.status in ("failed", "partial") else None,
                       "attempts": r.attempts, "retry_at": r.retry_at} for r in recs],
            "text_rows": sum(r.text_rows for r in recs), "image_rows": sum(r.image_rows for r in recs),
            "stale": sorted(k.partition(":")[2] for k in plan.changed + plan.stale + plan.new),
            "deleted": sorted(k.partition(":")[2] for k in plan.deleted),
        }
    return {"fingerprint": fp, "sources": sources}


# -- discovery: the CLI finds a running server ------------------------------------------------------
def announce(settings: Settings, url: str) -> Path:
    """Write where this process serves queries, for `mmrag query` (removed by `withdraw`)."""
    from mmrag.runs import owner_tags

    settings.home.mkdir(parents=True, exist_ok=True)
    path = settings.home / DISCOVERY
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"url": url, "started": time.time(), **owner_tags()}))
    os.replace(tmp, path)
    return path


def withdraw(settings: Settings) -> None:
    path = settings.home / DISCOVERY
    try:
        if json.loads(path.read_text()).get("mmrag/pid") == str(os.getpid()):
            path.unlink()
    except (OSError, ValueError):
        pass


def running_server(settings: Settings) -> str | None:
    """The URL of this data dir's query server: MMRAG_API_URL, else the one that announced itself
    and whose process is alive; None when there is none."""
    url = os.environ.get("MMRAG_API_URL", "").strip()
    if url:
        return url.rstrip("/")
    from mmrag.runs import owner_alive

    try:
        info = json.loads((settings.home / DISCOVERY).read_text())
    except (OSError, ValueError):
        return None
    return info.get("url") if owner_alive(info) else None
