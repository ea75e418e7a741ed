"""Model usage and cost: what every request to an OpenAI-compatible server used, summed where it
was spent.

`LLMClient` reports each reply's `usage` (prompt and completion tokens), the images it sent, its
latency and its model to `record`, which adds them to every meter active in the calling context
(`metered`), under the file the work is for (`for_file`; "" = work that serves no one file). A
meter is a run step's (summed per file into the manifest, per run into Dagster's metadata and run
tags) or a query's (the reply's OpenAI-style `usage`). The scopes are context variables: they follow
threads started with a copy of the context (`LLMClient.achat`, `asyncio.to_thread`, the graph's
event loop through `run_coroutine_threadsafe`) and asyncio tasks; a thread pool's workers need
`in_context`, and a queue's worker tasks the caller's `capture` (LightRAG's model and embedding
functions: `mmrag.graph.lightrag_adapter.carry_usage`). Answers a cache gave instead of the server are counted apart (`cache_hit`), with the
tokens they saved where the cache knows them.

`Prices` (MMRAG_PRICES: JSON inline or a file: {"model": {"prompt": USD per 1M tokens,
"completion": USD per 1M tokens, "image": USD per image}}) turns usage into cost; models it does
not name cost nothing and are listed as unpriced.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import threading
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

SHARED = ""  # the file key of work that serves no one file (a batch of several files' vectors)
DELETED = "*deleted"  # the file key that keeps what deleted files had cost (no source is named so)
COUNTS = ("requests", "prompt_tokens", "completion_tokens", "images", "latency_ms", "cache_hits",
          "saved_prompt_tokens", "saved_completion_tokens")


@dataclass
class Usage:
    """Sums over requests to one server (or one model, one file...)."""

    requests: int = 0  # requests that got a reply (retries that got one included)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    images: int = 0  # images sent (image_url parts; pictures embedded)
    latency_ms: float = 0.0  # summed over requests
    cache_hits: int = 0  # answers a cache gave instead of the server
    saved_prompt_tokens: int = 0  # what those answers had cost, where the cache knows it
    saved_completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, other: "Usage") -> "Usage":
        for f in COUNTS:
            setattr(self, f, getattr(self, f) + getattr(other, f))
        return self

    def __bool__(self) -> bool:
        return any(getattr(self, f) for f in COUNTS)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["latency_ms"] = round(d["latency_ms"], 1)
        return d

    @classmethod
    def of(cls, d: dict) -> "Usage":
        return cls(**{f.name: d.get(f.name) or 0 for f in fields(cls)})


Key = tuple[str, str, str]  # (file key, model, kind: "chat" | "embed")


class UsageMeter:
    """Usage by (file key, model, kind); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rows: dict[Key, Usage] = {}

    def add(self, key: Key, usage: Usage) -> None:
        with self._lock:
            self.rows.setdefault(key, Usage()).add(usage)

    def snapshot(self) -> dict[Key, Usage]:
        with self._lock:
            return {k: Usage().add(u) for k, u in self.rows.items()}

    def total(self) -> Usage:
        return sum_usage(self.snapshot().values())

    def by_model(self) -> dict[tuple[str, str], Usage]:
        out: dict[tuple[str, str], Usage] = {}
        for (_, model, kind), u in self.snapshot().items():
            out.setdefault((model, kind), Usage()).add(u)
        return out

    def __bool__(self) -> bool:
        return any(self.snapshot().values())


def sum_usage(usages: Iterable[Usage]) -> Usage:
    total = Usage()
    for u in usages:
        total.add(u)
    return total


_METERS: contextvars.ContextVar[tuple[UsageMeter, ...]] = contextvars.ContextVar("mmrag_usage_meters", default=())
_FILE: contextvars.ContextVar[str] = contextvars.ContextVar("mmrag_usage_file", default=SHARED)


@contextlib.contextmanager
def metered(meter: UsageMeter | None = None) -> Iterator[UsageMeter]:
    """Count the requests made in this context (and in threads and tasks it starts) in `meter` too."""
    meter = meter if meter is not None else UsageMeter()
    token = _METERS.set((*_METERS.get(), meter))
    try:
        yield meter
    finally:
        _METERS.reset(token)


@contextlib.contextmanager
def for_file(file_key: str) -> Iterator[None]:
    """The requests made in this context are for `file_key`."""
    token = _FILE.set(file_key)
    try:
        yield
    finally:
        _FILE.reset(token)


def current_file() -> str:
    return _FILE.get()


def in_context(fn: Callable) -> Callable:
    """`fn` to run on a pool's threads with the caller's meters and file (a copy of its context each call)."""
    parent = contextvars.copy_context()
    return lambda *a, **kw: parent.copy().run(fn, *a, **kw)


def capture() -> tuple:
    """This context's meters and file, to hand to work that runs in another context (`within`)."""
    return _METERS.get(), _FILE.get()


@contextlib.contextmanager
def within(captured: tuple | None) -> Iterator[None]:
    """Count in the meters and under the file `capture` took (None: as the context is)."""
    if captured is None:
        yield
        return
    meters, file_key = captured
    t1, t2 = _METERS.set(meters), _FILE.set(file_key)
    try:
        yield
    finally:
        _FILE.reset(t2)
        _METERS.reset(t1)


def _add(model: str, kind: str, usage: Usage) -> None:
    meters = _METERS.get()
    if meters:
        key = (_FILE.get(), model or "", kind)
        for m in meters:
            m.add(key, usage)


def record(model: str, kind: str, *, prompt_tokens: int = 0, completion_tokens: int = 0, images: int = 0,
           latency_ms: float = 0.0) -> None:
    """One request that got a reply."""
    _add(model, kind, Usage(1, int(prompt_tokens or 0), int(completion_tokens or 0), int(images or 0),
                            float(latency_ms or 0.0)))


def cache_hit(model: str, kind: str, n: int = 1, *, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
    """`n` answers a cache gave instead of the server; the tokens they had cost, where known."""
    if n > 0:
        _add(model, kind, Usage(cache_hits=n, saved_prompt_tokens=int(prompt_tokens or 0),
                                saved_completion_tokens=int(completion_tokens or 0)))


def reply_usage(resp: Any) -> tuple[int, int]:
    """(prompt tokens, completion tokens) of an OpenAI reply (0, 0 where it says nothing)."""
    u = getattr(resp, "usage", None)
    if u is None:
        return 0, 0
    get = u.get if isinstance(u, dict) else lambda k: getattr(u, k, None)
    return int(get("prompt_tokens") or 0), int(get("completion_tokens") or 0)


# -- prices ----------------------------------------------------------------------------------------
class Prices:
    """USD per 1M prompt and completion tokens and per image, by model name."""

    def __init__(self, table: dict[str, dict] | None = None):
        self.table = {}
        for model, p in (table or {}).items():
            if not isinstance(p, dict):
                raise ValueError(f"MMRAG_PRICES: the price of {model!r} must be an object "
                                 '{"prompt": USD per 1M tokens, "completion": ..., "image": USD per image}')
            unknown = set(p) - {"prompt", "completion", "image"}
            if unknown:
                raise ValueError(f"MMRAG_PRICES: {model!r} has unknown fields {sorted(unknown)}: "
                                 "prompt, completion (USD per 1M tokens), image (USD per image)")
            self.table[str(model)] = {k: float(p.get(k) or 0.0) for k in ("prompt", "completion", "image")}

    @classmethod
    def parse(cls, spec: str) -> "Prices":
        """MMRAG_PRICES: JSON inline, or the path of a JSON file; "" = no prices."""
        spec = (spec or "").strip()
        if not spec:
            return cls()
        if not spec.startswith("{"):
            path = Path(spec).expanduser()
            try:
                spec = path.read_text(encoding="utf-8")
            except OSError as e:
                raise ValueError(f"MMRAG_PRICES: cannot read {path}: {e}") from e
        try:
            table = json.loads(spec)
        except ValueError as e:
            raise ValueError(f"MMRAG_PRICES is not JSON: {e}") from e
        if not isinstance(table, dict):
            raise ValueError("MMRAG_PRICES must be a JSON object {model: {prompt, completion, image}}")
        return cls(table)

    def __bool__(self) -> bool:
        return bool(self.table)

    def cost(self, by_model: dict[str, Usage]) -> dict:
        """{"usd", "saved_usd" (what cache hits would have cost), "by_model": {model: usd},
        "unpriced": [models with usage and no price]}."""
        usd = saved = 0.0
        per: dict[str, float] = {}
        unpriced = []
        for model, u in sorted(by_model.items()):
            p = self.table.get(model)
            if p is None:
                if u.requests or u.cache_hits:
                    unpriced.append(model)
                continue
            c = (u.prompt_tokens * p["prompt"] + u.completion_tokens * p["completion"]) / 1e6 + u.images * p["image"]
            saved += (u.saved_prompt_tokens * p["prompt"] + u.saved_completion_tokens * p["completion"]) / 1e6
            per[model] = round(c, 6)
            usd += c
        return {"usd": round(usd, 6), "saved_usd": round(saved, 6), "by_model": per, "unpriced": unpriced}


def summary(rows: dict[Key, Usage] | Iterable[tuple[Key, Usage]], prices: Prices | None = None) -> dict:
    """OpenAI-style `usage` of some rows: prompt_tokens, completion_tokens, total_tokens, plus
    requests, images, latency_ms, cache hits and saved tokens, `by_model` ({model: the same
    counts}), and `cost` when there are prices."""
    items = rows.items() if isinstance(rows, dict) else rows
    per: dict[str, Usage] = {}
    for (_, model, _), u in items:
        per.setdefault(model, Usage()).add(u)
    total = sum_usage(per.values())
    out = {"prompt_tokens": total.prompt_tokens, "completion_tokens": total.completion_tokens,
           "total_tokens": total.total_tokens, **{k: v for k, v in total.to_dict().items()
                                                  if k not in ("prompt_tokens", "completion_tokens")},
           "by_model": {m: {**u.to_dict(), "total_tokens": u.total_tokens} for m, u in sorted(per.items())}}
    if prices:
        out["cost"] = prices.cost(per)
    return out
