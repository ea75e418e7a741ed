"""The graph's extraction: LightRAG's entity and relation extraction over extraction units (groups
of consecutive chunks, `mmrag.graph.units`) instead of single chunks, a session's requests all
at once (and the next session's ahead of it), and LightRAG's model function with its reply checks.
`Extractor` holds the model and the unit size; each call is given the LightRAG instance it works on."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from mmrag.graph.lightrag_adapter import chunk_text, lr_doc_id
from mmrag.graph.units import attribute_entity, attribute_relation, plan_units
from mmrag.ids import bounded_name
from mmrag.index.chunking import Chunk
from mmrag.models import usage
from mmrag.models.tokenizer import TOKENIZER

_EXTRACTION_MARK, _TUPLE_DELIM = "<|COMPLETE|>", "<|#|>"
_NOT_IN_ALIAS = ("_id", "original_prompt")  # fields of a cache entry its per-chunk aliases leave out


class Extractor:
    """`llm`: the model client (None: no extraction, the structural graph); `unit_tokens`: the size of an
    extraction unit (0 = one per chunk). Keeps, between calls, the files whose requests failed in a
    session's first pass (`failure`) and the next session's requests asked ahead (`start_ahead`)."""

    def __init__(self, llm: Any = None, unit_tokens: int = 1200):
        self.llm, self.unit_tokens = llm, int(unit_tokens)
        self._prefailed: dict[str, BaseException] = {}
        self._ahead: asyncio.Future | None = None

    def identity(self) -> str:
        """The model that extracts (server and name), for the cache marker."""
        return f"{getattr(self.llm, 'base_url', '')}|{getattr(self.llm, 'model', type(self.llm).__name__)}"

    @property
    def asking_ahead(self) -> bool:
        """Whether the next session's requests are asked (or kept) ahead of it."""
        return self._ahead is not None

    def failure(self, fk: str) -> BaseException | None:
        """The error of `fk`'s extraction requests in this session's first pass, if they failed."""
        return self._prefailed.pop(fk, None)

    async def complete(self, prompt: str, system_prompt: str | None = None, history_messages=None, **kw: Any) -> str:
        """LightRAG's model function. A reply that cannot be right is refused here (so LightRAG
        neither caches nor merges it): a reply with characters no model writes (C0 controls: they also
        make GraphML unwritable), or an extraction reply with none of LightRAG's delimiters, fails the
        file (transient: the next sync asks again)."""
        kw.pop("hashing_kv", None)
        if self.llm is None:
            raise RuntimeError("LightRAG asked for an LLM, but this graph store has none (structural mode)")
        from mmrag.models.llm import LLMError, unreadable

        reply = await self.llm.acomplete(prompt, system_prompt=system_prompt, history_messages=history_messages or [], **kw)
        if unreadable(reply or ""):
            raise LLMError(f"the model's reply is unreadable (control characters): {(reply or '')[:60]!r}", retryable=True)
        asked = (system_prompt or "") + prompt
        if _EXTRACTION_MARK in asked:
            if _EXTRACTION_MARK not in reply and _TUPLE_DELIM not in reply:
                raise LLMError(f"the model's extraction reply is not in LightRAG's format: {reply[:80]!r}", retryable=True)
            return _bound_extraction(reply)
        return reply

    # -- extraction units -----------------------------------------------------------------------------
    def _units_of(self, chunks: dict[str, dict]) -> tuple[dict[str, dict], dict[str, dict[str, str]]]:
        """One document's chunks as LightRAG holds them (id -> record, in document order) grouped into
        extraction units (`mmrag.graph.units`): ({unit id: the record LightRAG's extraction
        reads}, {unit id: {member chunk id: its text}})."""
        from lightrag.utils import compute_mdhash_id
        ids = list(chunks)
        texts = [chunks[c]["content"] for c in ids]
        tokens = [int(chunks[c].get("tokens") or TOKENIZER.count(t)) for c, t in zip(ids, texts)]
        units: dict[str, dict] = {}
        members: dict[str, dict[str, str]] = {}
        for u in plan_units(texts, tokens, self.unit_tokens):
            first = chunks[ids[u.members[0]]]
            uid = compute_mdhash_id(u.content, prefix="unit-")
            units[uid] = {"content": u.content, "tokens": u.tokens, "chunk_order_index": first.get("chunk_order_index", 0),
                          "full_doc_id": first.get("full_doc_id", ""), "file_path": first.get("file_path", "")}
            members.setdefault(uid, {}).update({ids[i]: texts[i] for i in u.members})
        return units, members

    def _lightrag_chunks(self, fk: str, items: list) -> dict[str, dict]:
        """The chunk records LightRAG builds when `_aindex_llm` inserts this file (same ids, same order)."""
        from lightrag.utils import compute_mdhash_id
        out: dict[str, dict] = {}
        for i, (_, t) in enumerate(items):
            out.setdefault(compute_mdhash_id(t, prefix="chunk-"), {"content": t, "tokens": TOKENIZER.count(t),
                                                                 "chunk_order_index": i, "full_doc_id": lr_doc_id(fk),
                                                                 "file_path": fk})
        return out

    async def extract_units(self, rag, chunks: dict[str, dict], pipeline_status=None, pipeline_status_lock=None) -> list:
        """LightRAG's per-document extraction step, over extraction units instead of its chunks: each
        entity and relation a unit yields is attributed to the member chunks that name it, and each
        member chunk lists the unit's LLM-cache entries (LightRAG rebuilds shared entities from them
        when another document is deleted)."""
        from dataclasses import asdict

        from lightrag.operate import extract_entities
        from lightrag.utils import update_chunk_cache_list
        units, members = self._units_of(chunks)
        if not units:
            return []
        sink = _CacheKeySink()
        results = await extract_entities(units, global_config=asdict(rag), pipeline_status=pipeline_status,
                                         pipeline_status_lock=pipeline_status_lock,
                                         llm_response_cache=rag.llm_response_cache, text_chunks_storage=sink)
        # LightRAG rebuilds an entity that survives a deletion from the cached extractions whose
        # `chunk_id` is one of its chunks: each member chunk gets an alias of its unit's entries.
        # An alias holds the reply, not the prompt (LightRAG never reads `original_prompt` back; with
        # it, the aliases were 93 % of a 27 MB cache for 50 files).
        for uid, keys in sink.keys.items():
            entries = dict(zip(keys, await rag.llm_response_cache.get_by_ids(keys)))
            for cid in members.get(uid, {}):
                aliases = {f"{k}:{cid}": {**{f: v for f, v in e.items() if f not in _NOT_IN_ALIAS}, "chunk_id": cid}
                           for k, e in entries.items() if e}
                if aliases:
                    await rag.llm_response_cache.upsert(aliases)
                    await update_chunk_cache_list(cid, rag.text_chunks, list(aliases), "entity_extraction")
        return [_attribute(nodes, edges, members) for nodes, edges in results]

    async def prefetch(self, rag, batch, failed: dict[str, BaseException] | None = None) -> None:
        """A session's first pass: the extraction requests of all its files at once, sharing one
        in-flight budget (LightRAG's `llm_model_max_async`, and the LLM client's limit below it), into
        LightRAG's LLM cache; each file's insert then reads its extractions from the cache while the
        files are merged one by one. A file whose requests failed here (or ahead: `failed`) fails
        without asking again."""
        self._prefailed = {}
        if self.llm is None:
            return
        failed = failed or {}
        outcomes = await self._extract_all(rag, [b for b in batch if b[0] not in failed], rag.llm_response_cache)
        self._prefailed = {**failed, **outcomes}

    async def _extract_all(self, rag, batch, cache) -> dict[str, BaseException]:
        """The extraction requests of `batch`'s files, replies into `cache`; {file key: its error}."""
        from dataclasses import asdict

        from lightrag.operate import extract_entities
        cfg = asdict(rag)

        async def one(fk: str, chunks: list[Chunk]) -> None:  # a task of its own: its usage scope is its own
            items = [(c, t) for c in chunks if (t := chunk_text(c.text))]
            units, _ = self._units_of(self._lightrag_chunks(fk, items))
            if units:
                with usage.for_file(fk):
                    await extract_entities(units, global_config=cfg, llm_response_cache=_CountedCache(cache, self.llm),
                                           text_chunks_storage=_CacheKeySink())

        outcomes = await asyncio.gather(*(one(fk, chunks) for fk, _, chunks in batch), return_exceptions=True)
        return {fk: e for (fk, _, _), e in zip(batch, outcomes) if isinstance(e, BaseException)}

    def start_ahead(self, rag, batch) -> None:
        """Ask the next session's extraction requests now (`_extract_ahead`), when there is a model."""
        if batch and self.llm is not None:
            self._ahead = asyncio.ensure_future(self._extract_ahead(rag, batch))

    async def _extract_ahead(self, rag, batch) -> tuple[dict[str, dict], dict[str, BaseException]]:
        """The next session's extraction requests, asked while this session merges its files and
        embeds their entities (CPU work during which the model server had nothing to do: 50 files in
        2 sessions, some 2-3 s at 0.2 s a request). The replies are kept aside (`_AheadCache`), not in
        LightRAG's cache: they belong to the next session, and are written into its cache when it
        begins (`take_ahead`); a roll-back or an error drops them."""
        ahead = _AheadCache(rag.llm_response_cache)
        return ahead.entries, await self._extract_all(rag, batch, ahead)

    async def take_ahead(self, rag) -> dict[str, BaseException]:
        """Write the replies asked ahead for this session into LightRAG's cache (the session's own
        writes from here on); returns the files whose requests failed ahead."""
        task, self._ahead = self._ahead, None
        if task is None:
            return {}
        entries, failed = await task
        if entries:
            await rag.llm_response_cache.upsert(entries)
        return failed

    async def drop_ahead(self) -> None:
        task, self._ahead = self._ahead, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


class _AheadCache:
    """An LLM-cache stand-in for replies asked ahead of their session: reads fall through to
    LightRAG's cache (a unit extracted before is not asked again), writes stay here."""

    def __init__(self, cache):
        self._cache, self.global_config, self.entries = cache, cache.global_config, {}

    async def get_by_id(self, key: str) -> dict | None:
        return self.entries.get(key) or await self._cache.get_by_id(key)

    async def upsert(self, data: dict[str, dict]) -> None:
        self.entries.update(data)


class _CountedCache:
    """LightRAG's LLM cache as one file's extraction requests read it: an extraction found there is
    counted as a cache hit of the file (`mmrag.models.usage`). LightRAG reads a key again before it
    writes a fresh reply: a key this reader missed before is no hit."""

    def __init__(self, cache, llm):
        self._cache, self.global_config = cache, cache.global_config
        self._model, self._missed = getattr(llm, "model", ""), set()

    async def get_by_id(self, key: str) -> dict | None:
        entry = await self._cache.get_by_id(key)
        if not entry:
            self._missed.add(key)
        elif key not in self._missed and ":extract:" in key:
            usage.cache_hit(self._model, "chat")
        return entry

    async def upsert(self, data: dict[str, dict]) -> None:
        await self._cache.upsert(data)

    def __getattr__(self, name: str):
        return getattr(self._cache, name)


class _CacheKeySink:
    """Stands in for LightRAG's chunk store during unit extraction: collects the LLM-cache keys
    LightRAG would note on a chunk (here: a unit), so they can be noted on the unit's member chunks."""

    def __init__(self):
        self.keys: dict[str, list[str]] = {}

    async def get_by_id(self, uid: str) -> dict:
        return {"llm_cache_list": list(self.keys.get(uid, []))}

    async def upsert(self, data: dict[str, dict]) -> None:
        for uid, rec in data.items():
            self.keys[uid] = list(rec.get("llm_cache_list") or [])


def _attribute(nodes: dict[str, list[dict]], edges: dict[tuple, list[dict]], members: dict[str, dict[str, str]]):
    """A unit's extraction result with each entity and relation attributed to the member chunks it came
    from (`mmrag.graph.units`): one record per chunk, as if each chunk had been extracted alone.
    LightRAG merges records by description (identical ones count once) and sums relation weights, so a
    relation's weight is split among its copies."""
    out_nodes = {name: [{**dp, "source_id": cid} for dp in dps
                        for cid in attribute_entity(name, members.get(dp["source_id"], {dp["source_id"]: ""}))]
                 for name, dps in nodes.items()}
    out_edges: dict[tuple, list[dict]] = {}
    for key, dps in edges.items():
        recs = []
        for dp in dps:
            cids = attribute_relation(dp["src_id"], dp["tgt_id"], members.get(dp["source_id"], {dp["source_id"]: ""}))
            recs += [{**dp, "source_id": cid, "weight": float(dp.get("weight", 1.0)) / len(cids)} for cid in cids]
        out_edges[key] = recs
    return out_nodes, out_edges


def _bound_extraction(reply: str) -> str:
    """Entity names in an extraction reply cut to what LightRAG's Milvus collections hold (LightRAG
    cuts them to 256 characters, which can be 1,024 bytes): one overlong name never fails a file."""
    out = []
    for line in reply.split("\n"):
        fields = line.split(_TUPLE_DELIM)
        kind = fields[0].strip().strip('("').lower()
        if kind == "entity" and len(fields) > 1:
            fields[1] = bounded_name(fields[1])
        elif kind in ("relation", "relationship") and len(fields) > 2:
            fields[1], fields[2] = bounded_name(fields[1]), bounded_name(fields[2])
        out.append(_TUPLE_DELIM.join(fields))
    return "\n".join(out)
