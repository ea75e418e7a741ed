"""Modal descriptions: a text description for every table, image and equation block.

`describe_document(s)` fill `Block.description` (plus `description_source` and `meta["entity"]`)
IN PLACE on the document's blocks and returns `DescribeStats`. With a model server, images with
local bytes go to the vision model, tables and equations to the text model (an image without bytes,
such as a remote one that is never fetched, is described extractively: a model that cannot see it
would only rephrase its caption), using RAG-Anything's
prompts (they ask for JSON with `detailed_description` and `entity_info`). Model answers are cached
in the manifest (namespace "describe") under sha256(block content hash, model, PROMPT_VERSION), so
an unchanged block is never sent twice. Without a server, or when a call fails after the client's
retries, the description is extractive (caption, OCR text, nearby text, the table or the LaTeX);
extractive results are not cached, so a later run with the server up will ask it. Only the
configured server is contacted: image URLs found in documents are never fetched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import json_repair

from mmrag.blocks import Block, BlockKind, ParsedDocument
from mmrag.config import PROMPT_VERSION
from mmrag.manifest import Manifest
from mmrag.models import usage
from mmrag.models.llm import LLMClient, LLMError, unreadable

CACHE_NAMESPACE = "describe"
MAX_TABLE_PROMPT_CHARS = 12000  # table body sent to the model
MAX_TABLE_EXTRACT_CHARS = 2000  # table body kept in an extractive description
MAX_OCR_CHARS = 1500
MAX_CONTEXT_CHARS = 600  # nearby text in an extractive description

_log = logging.getLogger(__name__)
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_THINK = re.compile(r"<(think|thinking)>.*?</\1>", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```(?:json)?\s*(\{.*?\})\s*```", re.DOTALL)
_BAD_ESCAPE = re.compile(r'\\(?![\\"/bfnrtu])')


@dataclass
class DescribeStats:
    blocks: int = 0  # modal blocks seen
    llm_calls: int = 0  # blocks sent to the model (each call may retry inside the client)
    cache_hits: int = 0
    extractive: int = 0
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@lru_cache(maxsize=1)
def _prompts() -> dict[str, str]:
    # Imported lazily: importing raganything pulls in LightRAG (slow), and only model calls need it.
    from raganything.prompt import PROMPTS

    return PROMPTS.snapshot()


def cache_key(block: Block, model: str) -> str:
    return hashlib.sha256(f"{block.content_hash()}\x00{model}\x00{PROMPT_VERSION}".encode()).hexdigest()


def local_image(block: Block, image_root: Path | None = None) -> Path | None:
    """The block's image as an existing local file, or None (never a URL, never downloaded)."""
    if block.kind != BlockKind.IMAGE or not block.image_path or _URL.match(block.image_path):
        return None
    p = Path(block.image_path)
    if not p.is_absolute() and image_root is not None:
        p = Path(image_root) / p
    return p if p.is_file() else None


# -- extractive -------------------------------------------------------------------------------------
def _clip(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _clip_table(md: str, limit: int) -> str:
    """Whole rows of a Markdown table up to `limit` chars, noting how many rows were left out."""
    lines = [ln for ln in md.strip().splitlines() if ln.strip()]
    kept: list[str] = []
    size = 0
    for ln in lines:
        if kept and size + len(ln) + 1 > limit:
            break
        kept.append(_clip(ln, limit))
        size += len(ln) + 1
    rest = len(lines) - len(kept)
    return "\n".join(kept) + (f"\n… ({rest} more rows)" if rest else "")


def extractive_description(block: Block, context: str = "") -> str:
    parts = [block.caption.strip()]
    if block.kind == BlockKind.IMAGE:
        ocr = str(block.meta.get("ocr_text") or "").strip()
        if ocr:
            parts.append("Text in image: " + _clip(ocr, MAX_OCR_CHARS))
        if context.strip():
            parts.append("Context: " + _clip(context, MAX_CONTEXT_CHARS))
    elif block.kind == BlockKind.TABLE:
        if block.text.strip():
            parts.append(_clip_table(block.text, MAX_TABLE_EXTRACT_CHARS))
    elif block.kind == BlockKind.EQUATION:
        if block.text.strip():
            parts.append(_clip(block.text, 1000))
    return "\n".join(p for p in parts if p)


# -- prompts -----------------------------------------------------------------------------------------
@dataclass
class _Request:
    model: str
    prompt: str
    system: str
    image: Path | None  # set: vision model with this image; None: text model


def _build_request(block: Block, context: str, llm: LLMClient, image_root: Path | None) -> _Request | None:
    """The model call for a block, or None when there is nothing to send."""
    P = _prompts()
    caption = block.caption.strip() or "None"
    ocr = str(block.meta.get("ocr_text") or "").strip()
    if block.kind == BlockKind.IMAGE:
        if ocr:
            context = (context + "\n\nText found in the image (OCR):\n" + _clip(ocr, MAX_OCR_CHARS)).strip()
        image = local_image(block, image_root)
        if image is None:
            # No bytes (a remote image is never fetched): a model that cannot see the picture only
            # rephrases its caption and context, which the extractive description already holds.
            return None
        key = "vision_prompt_with_context" if context else "vision_prompt"
        vision = P.get(key, P["vision_prompt"]).format(
            context=context,
            section_path=block.section or "None",
            entity_name="unique descriptive name for this image",
            image_path=image.name,
            captions=caption,
            footnotes="None",
        )
        return _Request(llm.vlm_model, vision, P["IMAGE_ANALYSIS_SYSTEM"], image)
    if not block.text.strip():
        return None
    if block.kind == BlockKind.TABLE:
        key = "table_prompt_with_context" if context else "table_prompt"
        prompt = P.get(key, P["table_prompt"]).format(
            context=context,
            entity_name="descriptive name for this table",
            table_img_path=Path(block.image_path).name if block.image_path else "None",
            table_caption=caption,
            table_body=_clip_table(block.text, MAX_TABLE_PROMPT_CHARS),
            table_footnote="None",
        )
        return _Request(llm.model, prompt, P["TABLE_ANALYSIS_SYSTEM"], None)
    if block.caption.strip():
        context = (f"Equation caption: {block.caption.strip()}\n" + context).strip()
    key = "equation_prompt_with_context" if context else "equation_prompt"
    prompt = P.get(key, P["equation_prompt"]).format(
        context=context,
        equation_text=block.text.strip(),
        equation_format=str(block.meta.get("format") or "latex"),
        entity_name="descriptive name for this equation",
    )
    return _Request(llm.model, prompt, P["EQUATION_ANALYSIS_SYSTEM"], None)


# -- reply parsing --------------------------------------------------------------------------------
def _restore_latex(value: Any) -> Any:
    # json.loads reads LaTeX's "\frac" / "\beta" as form feed / backspace + letters; undo that.
    if isinstance(value, str):
        return re.sub(r"\x08(?=[A-Za-z])", r"\\b", re.sub(r"\x0c(?=[A-Za-z])", r"\\f", value))
    if isinstance(value, dict):
        return {k: _restore_latex(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore_latex(v) for v in value]
    return value


def _json_candidates(text: str) -> list[str]:
    out = _FENCE.findall(text)
    start, end = text.find("{"), text.rfind("}")
    if start != -1 and end > start:
        out.append(text[start : end + 1])
    elif start != -1:
        out.append(text[start:])  # cut off mid-object: json_repair may still recover it
    return out


def parse_reply(reply: str) -> tuple[str, dict | None]:
    """(detailed description, entity_info) from a model reply; the cleaned raw text if it has no
    usable JSON."""
    text = _THINK.sub("", reply).strip()
    for cand in _json_candidates(text):
        data: Any = None
        for attempt in (lambda c: json.loads(c), lambda c: json.loads(_BAD_ESCAPE.sub(r"\\\\", c)), json_repair.loads):
            try:
                data = attempt(cand)
            except Exception:  # noqa: BLE001 - try the next, more forgiving reader
                continue
            if isinstance(data, dict) and data:
                break
        if not isinstance(data, dict):
            continue
        data = _restore_latex(data)
        desc = data.get("detailed_description")
        if isinstance(desc, str) and desc.strip():
            entity = data.get("entity_info")
            return desc.strip(), entity if isinstance(entity, dict) else None
    stripped = re.sub(r"^```\w*\s*|\s*```$", "", text).strip()
    return stripped, None


# -- the stage -------------------------------------------------------------------------------------
def _apply(block: Block, description: str, source: str, entity: dict | None = None, error: str = "") -> None:
    block.description = description
    block.description_source = source  # type: ignore[assignment]
    for key, value in (("entity", entity), ("describe_error", error)):
        if value:
            block.meta[key] = value
        else:
            block.meta.pop(key, None)


def _apply_extractive(block: Block, context: str, error: str = "") -> None:
    _apply(block, extractive_description(block, context), "extractive", error=error)


class _Breaker:
    """Stops calling a server that keeps failing with transient errors (down, overloaded)."""

    def __init__(self, limit: int):
        self.limit, self.streak, self.last = limit, 0, ""
        self._lock = threading.Lock()

    def open(self) -> bool:
        with self._lock:
            return self.limit > 0 and self.streak >= self.limit

    def record(self, error: LLMError | None) -> None:
        with self._lock:
            if error is None:
                self.streak = 0
            elif error.retryable:
                self.streak, self.last = self.streak + 1, str(error)


def describe_document(
    doc: ParsedDocument,
    llm: LLMClient | None,
    cache: Manifest,
    log: Any = None,
    *,
    image_root: Path | None = None,
    give_up_after: int = 3,
) -> DescribeStats:
    """Describe every modal block of `doc` in place; never raises for a model failure.

    `image_root` resolves relative `image_path`s. After `give_up_after` consecutive transient
    failures (retries already spent) the remaining blocks are described extractively without
    calling the server (0 disables this).
    """
    return describe_documents([doc], llm, cache, log, image_root=image_root, give_up_after=give_up_after)[doc.file_key]


def describe_documents(
    docs: list[ParsedDocument],
    llm: LLMClient | None,
    cache: Manifest,
    log: Any = None,
    *,
    image_root: Path | None = None,
    give_up_after: int = 3,
) -> dict[str, DescribeStats]:
    """`describe_document` for the documents of a run, their model requests in one pool (the client's
    concurrency: one in-flight budget for the run, not per file). Blocks of the same content (the same
    picture or table in several files) share one request and one cache entry. {file key: stats}."""
    log = log or _log
    stats = {doc.file_key: DescribeStats() for doc in docs}
    pending: dict[str, list[tuple[ParsedDocument, Block, str, _Request]]] = {}  # cache key -> its blocks

    for doc in docs:
        st = stats[doc.file_key]
        for block in doc.modal_blocks():
            st.blocks += 1
            context = doc.context_around(block)
            req = _build_request(block, context, llm, image_root) if llm is not None else None
            if req is None:
                _apply_extractive(block, context)
                st.extractive += 1
                continue
            key = cache_key(block, req.model)
            hit = cache.cache_get(CACHE_NAMESPACE, key) if key not in pending else None
            if hit and hit.get("description"):
                _apply(block, hit["description"], hit.get("source") or "llm", hit.get("entity"))
                st.cache_hits += 1
                _saved(doc.file_key, req.model, hit.get("usage"))
                continue
            pending.setdefault(key, []).append((doc, block, context, req))

    if pending:
        assert llm is not None
        _run_model_calls(pending, llm, cache, stats, log, give_up_after)
    for doc in docs:
        st = stats[doc.file_key]
        log.info(f"described {doc.file_key}: {st.blocks} modal blocks, {st.llm_calls} model calls, "
                 f"{st.cache_hits} cached, {st.extractive} extractive, {len(st.errors)} errors")
    return stats


def _saved(file_key: str, model: str, cost: dict | None) -> None:
    """A description the cache (or another file's request in this run) gave `file_key`: a cache hit,
    with the tokens its request had used (entries written before usage was counted do not say)."""
    cost = cost or {}
    with usage.for_file(file_key):
        usage.cache_hit(model, "chat", prompt_tokens=cost.get("prompt_tokens", 0),
                        completion_tokens=cost.get("completion_tokens", 0))


def _run_model_calls(pending: dict[str, list[tuple[ParsedDocument, Block, str, _Request]]], llm: LLMClient,
                     cache: Manifest, stats: dict[str, DescribeStats], log: Any, give_up_after: int) -> None:
    """One request per cache key; its answer (or the extractive fallback) goes to every block holding
    that content. The first block holding it counts the model call, the others a cache hit."""
    lock = threading.Lock()
    breaker = _Breaker(give_up_after)

    def fallback(items, msg: str) -> None:
        for doc, block, context, _ in items:
            _apply_extractive(block, context, msg)
            with lock:
                stats[doc.file_key].extractive += 1
                stats[doc.file_key].errors.append(f"{block.id}: {msg}")

    def run(key: str) -> None:
        items = pending[key]
        doc, block, context, req = items[0]
        if breaker.open():
            fallback(items, f"skipped: model server kept failing ({breaker.last})")
            return
        with lock:
            stats[doc.file_key].llm_calls += 1
        try:
            # the request is the first holder's (its usage counts to that file), the others' are cache hits
            with usage.for_file(doc.file_key), usage.metered() as spent:
                if req.image is not None:
                    reply = llm.describe_image(req.prompt, req.image, system=req.system)
                else:
                    reply = llm.complete(req.prompt, system=req.system)
            if unreadable(reply):  # garbage from the server: never cached, never indexed
                raise LLMError(f"{req.model} returned unreadable text: {reply[:60]!r}", retryable=True)
            description, entity = parse_reply(reply)
            if not description:
                raise LLMError(f"{req.model} returned an empty description", retryable=True)
        except Exception as e:  # noqa: BLE001 - one block's failure must not fail the document
            err = e if isinstance(e, LLMError) else LLMError(f"{type(e).__name__}: {e}")
            breaker.record(err)
            log.warning(f"describe {doc.file_key} {block.id} ({block.kind.value}): {err}; using extractive text")
            fallback(items, str(err))
            return
        breaker.record(None)
        source = "vlm" if req.image is not None else "llm"
        total = spent.total()
        cost = {"prompt_tokens": total.prompt_tokens, "completion_tokens": total.completion_tokens}
        for i, (d, b, _, _) in enumerate(items):
            _apply(b, description, source, entity)
            if i:
                with lock:
                    stats[d.file_key].cache_hits += 1
                _saved(d.file_key, req.model, cost)
        cache.cache_put(CACHE_NAMESPACE, key, {"description": description, "entity": entity, "source": source,
                                               "model": req.model, "usage": cost})

    workers = max(1, min(llm.concurrency, len(pending)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="describe") as pool:
        list(pool.map(usage.in_context(run), list(pending)))  # the caller's usage meters, in the pool's threads
