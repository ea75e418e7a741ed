"""What a query server holds and answers, without HTTP: models, the Milvus client and the graph,
loaded once per process and shared by every request; the JSON of `mmrag query --json` and
`mmrag status --json`. The CLI uses the same functions in-process when no server is up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mmrag.config import Settings
from mmrag.models import factory
from mmrag.serve.access import OPEN, Scope


class QueryError(ValueError):
    """A request the index cannot serve as asked (bad mode, top_k, modality...): a 4xx."""


MAX_TOP_K = 100
MAX_QUESTION_CHARS = 4000


def check_request(question: str, top_k: int, mode: str, modalities) -> None:
    """The checks every path applies before it searches (CLI, API, chat page)."""
    from mmrag.retrieval.query import MODALITIES, MODES

    if not isinstance(question, str) or not question.strip():
        raise QueryError("question must be a non-empty string")
    if len(question) > MAX_QUESTION_CHARS:
        raise QueryError(f"the question is longer than {MAX_QUESTION_CHARS} characters")
    if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= MAX_TOP_K:
        raise QueryError(f"top_k must be an integer from 1 to {MAX_TOP_K}")
    if mode not in MODES:
        raise QueryError(f"mode must be one of {', '.join(MODES)}")
    bad = [m for m in modalities or [] if m not in MODALITIES]
    if bad:
        raise QueryError(f"unknown modality {bad[0]!r}: one of {', '.join(MODALITIES)}")


@dataclass
class Turn:
    """One question's result: what was retrieved and, when asked for, the answer."""

    hits: list[dict]
    graph_context: str
    mode: str
    answer: Any = None  # mmrag.retrieval.answer.Answer, or None when no answer was asked for
    timings_ms: dict = field(default_factory=dict)
    usage: dict = field(default_factory=dict)  # the model requests of this question (mmrag.models.usage.summary)
    pages: list = field(default_factory=list)  # the best pages among the text hits (`retrieve`'s "pages")
    rerank: dict | None = None  # the rerank stage: model, where, candidates, ms (or error); None = off
    visual_pages: dict | None = None  # the visual page search: model, where, candidates, ms (or error); None = off

    def to_json(self) -> dict:
        """The object `mmrag query --json` prints (and `POST /v1/query` returns)."""
        a = self.answer
        return {"hits": self.hits, "pages": self.pages, "answer": a.text if a else None, "citations": a.citations if a else [],
                "answer_status": a.status if a else None, "model": a.model if a else None,
                "mode": self.mode, "graph_context": self.graph_context, "usage": self.usage, "rerank": self.rerank,
                "visual_pages": self.visual_pages}


QUERY_LITE_WAIT_S = 5.0


class QueryService:
    """Everything a query needs, built by `mmrag.models.factory` on first use and kept: one per
    server process (the API, the chat page) or per CLI query."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings.from_env()

    # -- what it holds (the factory builds each once per process) -------------------------------
    def text_embedder(self):
        """The index's text embedder, uncached (questions are not worth keeping): the same model,
        backend and server as the ingest's."""
        emb = factory.text_embedder(self.settings, cached=False)
        emb.dim  # noqa: B018 - load (or reach) the model now
        return emb

    def image_embedder(self):
        emb = factory.image_embedder(self.settings, cached=False)
        emb.enabled  # noqa: B018 - load CLIP (or note why not) now
        return emb

    def store(self):
        # a question does not wait long for a Milvus Lite data dir that an ingest holds: 503 / a clear error
        return factory.milvus_store(self.settings, wait_s=min(self.settings.slot_wait_s, QUERY_LITE_WAIT_S))

    def reranker(self):
        """The rerank stage's cross-encoder (`MMRAG_RERANK_MODEL`), or None when off."""
        return factory.reranker(self.settings)

    def llm(self):
        return factory.llm_client(self.settings)

    def graph(self):
        return factory.graph_store(self.settings, text_embedder=self.text_embedder(), llm=self.llm(),
                                   manifest=factory.manifest(self.settings))

    def warm_up(self) -> None:
        self.text_embedder()
        self.image_embedder()
        self.store()

    # -- requests --------------------------------------------------------------------------------
    def ask(self, question: str, *, top_k: int = 5, mode: str = "naive", sources=None, files=None,
            modalities=None, answer: bool = False, images: bool = True, scope: Scope = OPEN) -> Turn:
        """Check the request, retrieve, and answer when asked. `scope`: the sources the caller may
        read (`Forbidden` for a source or file outside it; no source named = every source in it)."""
        from mmrag.models import usage
        from mmrag.retrieval.answer import answer as write_answer
        from mmrag.retrieval.query import retrieve

        check_request(question, top_k, mode, modalities)
        sources = scope.sources_for(sources, files)
        with usage.metered() as meter:  # the question's embedding, LightRAG's keywords, the answer
            res = retrieve(self.settings, question, top_k=top_k, mode=mode, sources=sources or None,
                           files=files or None, modalities=modalities or None, with_images=images,
                           text_embedder=self.text_embedder(), image_embedder=self.image_embedder() if images else None,
                           store=self.store(), graph=self.graph() if mode != "naive" else None,
                           reranker=self.reranker())
            ans = write_answer(question, res["hits"], self.llm(), graph_context=res["graph_context"]) if answer else None
        return Turn(res["hits"], res["graph_context"], mode, ans, res.get("timings_ms", {}),
                    usage.summary(meter.snapshot(), self.prices()), res.get("pages", []), res.get("rerank"),
                    res.get("visual_pages"))

    def prices(self):
        """MMRAG_PRICES, or None when it is unset or unreadable (a query never fails for it)."""
        try:
            return self.settings.prices() or None
        except ValueError:
            return None

    def query(self, question: str, **kw) -> dict:
        """The object `mmrag query --json` prints: `ask` as JSON."""
        return self.ask(question, **kw).to_json()


def status_json(settings: Settings, scope: Scope = OPEN) -> dict:
    """The object `mmrag status --json` prints: per source its files, rows, stale and deleted files
    and model usage; only the sources `scope` may read. `usage`: the totals (OpenAI-style, with
    `cost` under MMRAG_PRICES); a key that reads every source also sees the work no one file did
    and what deleted files had cost (`mmrag.models.usage.SHARED`, `DELETED`)."""
    from mmrag.manifest import RETRIED, Manifest
    from mmrag.models.usage import summary
    from mmrag.sources.sync import plan_sync, scan_root

    manifest = Manifest(settings.state_path)
    fp = settings.fingerprint()
    try:
        prices = settings.prices() or None
        price_error = None
    except ValueError as e:
        prices, price_error = None, str(e)
    sources = {}
    seen: dict = {}
    for name, root in manifest.sources().items():
        if not scope.allows(name):
            continue
        recs = manifest.all(name)
        scan = scan_root(root, name)
        plan = plan_sync(scan, {r.file_key: r for r in recs}, {r.file_key for r in recs}, fingerprint=fp)
        spent = manifest.usage(sources=[name])
        seen.update(spent)
        per_file: dict = {}
        for k, u in spent.items():
            per_file.setdefault(k[0], {})[k] = u
        sources[name] = {
            "root": root, "root_error": scan.error,
            "files": [{"path": r.rel_path, "status": r.status, "reason": r.reason, "text_rows": r.text_rows,
                       "image_rows": r.image_rows, "parser": r.parser,
                       # failed/partial: "content" waits for new bytes or config, "transient" is retried
                       "failure_kind": r.failure_kind if r.status in RETRIED else None,
                       "attempts": r.attempts, "retry_at": r.retry_at,
                       "usage": _file_usage(per_file.get(r.file_key))} for r in recs],
            "text_rows": sum(r.text_rows for r in recs), "image_rows": sum(r.image_rows for r in recs),
            "stale": sorted(k.partition(":")[2] for k in plan.changed + plan.stale + plan.new),
            "deleted": sorted(k.partition(":")[2] for k in plan.deleted),
            "usage": summary(spent, prices),
        }
    everything = manifest.usage() if scope.everything else seen
    out = {"fingerprint": fp, "sources": sources, "usage": summary(everything, prices)}
    if scope.everything:  # `mmrag up`'s parts, while it runs (mmrag.serve.health)
        from mmrag.serve import health

        out["service"] = health.read(settings.home)
    if price_error:
        out["usage"]["cost_error"] = price_error
    return out


def _file_usage(rows: dict | None) -> dict | None:
    """A file's usage in `mmrag status --json`: its sums over models (None: no request was made for it)."""
    if not rows:
        return None
    from mmrag.models.usage import sum_usage

    u = sum_usage(rows.values())
    return {"requests": u.requests, "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "images": u.images, "cache_hits": u.cache_hits}
