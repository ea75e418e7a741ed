"""LightRAG plumbing for GraphStore: one event loop per process, the Milvus env window, the offline
tokenizer handle, log filters, and reading graph counts from disk without opening LightRAG."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any, Coroutine

from mmrag.models.tokenizer import TOKENIZER

# LightRAG's Milvus delete reads `result.get(...)`; Milvus Lite 3.x returns a list, so each delete logs
# an ERROR although the rows are gone (the tests check): drop exactly that message.
logging.getLogger("lightrag").addFilter(lambda r: not (
    "Error while deleting vectors from" in (m := r.getMessage()) and "'list' object has no attribute 'get'" in m))


def graph_counts(working_dir: Path, namespace: str | None = None) -> tuple[int, int]:
    """(nodes, edges) read from the graph files on disk, without LightRAG or Milvus (for `status`):
    the given namespace's, or the sum over every workspace under working_dir."""
    import xml.etree.ElementTree as ET

    name = "graph_chunk_entity_relation.graphml"
    root = Path(working_dir)
    files = [root / workspace_name(namespace) / name] if namespace else sorted(root.glob(f"*/{name}"))
    nodes = edges = 0
    for f in (f for f in files if f.exists()):
        for _, el in ET.iterparse(f):
            tag = el.tag.rsplit("}", 1)[-1]
            nodes, edges = nodes + (tag == "node"), edges + (tag == "edge")
            el.clear()
    return nodes, edges


def workspace_name(namespace: str) -> str:
    """LightRAG workspace for a namespace: it prefixes Milvus collection names, so [A-Za-z0-9_] only."""
    return re.sub(r"\W", "_", namespace, flags=re.ASCII).strip("_") or "mmrag_graph"


class _SharedTokenizer:
    """TOKENIZER behind a handle that LightRAG's deep copies of its config (asdict) share: a copy
    of TOKENIZER itself fails on its lock and would fork the interned vocabulary."""

    encode, decode = staticmethod(TOKENIZER.encode), staticmethod(TOKENIZER.decode)

    def __deepcopy__(self, memo: dict) -> "_SharedTokenizer":
        return self


MAX_DOC_ID_BYTES = 64  # ... and a chunk's document id in VARCHAR(64)


def lr_doc_id(file_key: str) -> str:
    """LightRAG's document id of a file: the file key, or a hash of it when the key is longer than
    the chunk collection's `full_doc_id` field holds."""
    if len(file_key.encode("utf-8")) <= MAX_DOC_ID_BYTES:
        return file_key
    return "doc-" + hashlib.md5(file_key.encode("utf-8")).hexdigest()


def chunk_text(text: str) -> str:
    """The text LightRAG stores for a chunk (it sanitizes and strips)."""
    from lightrag.utils import sanitize_text_for_encoding
    return sanitize_text_for_encoding(text)


def chunk_id(text: str) -> str:
    """LightRAG's chunk id: md5 of the content, so identical chunks of two files share one id."""
    from lightrag.utils import compute_mdhash_id
    return compute_mdhash_id(chunk_text(text), prefix="chunk-")


class _Loop:
    """The process's one event loop for LightRAG, on a daemon thread."""

    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _guard = threading.Lock()

    @classmethod
    def run(cls, coro: Coroutine) -> Any:
        with cls._guard:
            if cls._loop is None:
                cls._loop = asyncio.new_event_loop()
                cls._thread = threading.Thread(target=cls._loop.run_forever, name="mmrag-lightrag", daemon=True)
                cls._thread.start()
        if threading.current_thread() is cls._thread:
            coro.close()
            raise RuntimeError("GraphStore's sync API called from inside its own event loop")
        return asyncio.run_coroutine_threadsafe(coro, cls._loop).result()


_ENV_LOCK = threading.Lock()
_OPEN: dict[str, Path] = {}  # workspace -> working_dir of the open GraphStore using it


@contextlib.contextmanager
def _milvus_env(uri: str, token: str, db: str):
    """LightRAG's Milvus storage takes its connection only from env vars (required to exist when
    LightRAG is built, read when storages initialize): set them for that window, then restore them.
    pymilvus parses MILVUS_URI when *imported* and rejects a Lite file path, so import it first."""
    import lightrag.kg.milvus_impl  # noqa: F401  (imports pymilvus)
    new = {"MILVUS_URI": uri, "MILVUS_TOKEN": token or "", "MILVUS_DB_NAME": db or "",
           "MILVUS_WORKSPACE": None, "MILVUS_USER": None, "MILVUS_PASSWORD": None}
    with _ENV_LOCK:
        old = {k: os.environ.get(k) for k in new}
        _set_env(new)
        try:
            yield
        finally:
            _set_env(old)


def _set_env(values: dict[str, str | None]) -> None:
    for k, v in values.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


