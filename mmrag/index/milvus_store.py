"""The Milvus collections (text, image; page when visual page retrieval is on) and idempotent
per-file writes.

One `MilvusClient` per URI per process. With Milvus Lite (a local path) the data dir is locked by
the first process that opens it until that process exits: a second process waits its turn
(`mmrag.index.lite_lock`, up to MMRAG_SLOT_WAIT_S), then raises `IndexBusyError` saying what to do.

Rows are keyed by (file key, block/chunk id, content hash): writing the same file twice writes the
same ids; `replace_file` upserts the new rows first and then deletes the file's other rows, so a
failure half-way never leaves a file with fewer rows than before.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator

from mmrag.index.lite_lock import IndexBusyError  # noqa: F401 - raised here, defined with the lock

log = logging.getLogger(__name__)
_clients: dict[tuple[str, str, str], Any] = {}
_clients_lock = threading.Lock()
_loaded_collections: set[tuple[str, str]] = set()

TEXT = "text"
IMAGE = "image"
PAGE = "page"  # one vector per rendered PDF page (mmrag.models.page_embed), when it is on
COLLECTIONS = (TEXT, IMAGE, PAGE)
MAX_TEXT = 65535
_INSERT_BATCH = 2000


@dataclass
class Row:
    id: str
    file_key: str
    source: str
    modality: str
    text: str
    vector: list[float]
    page: int = -1
    bbox: tuple | None = None
    t_start: float = -1.0
    t_end: float = -1.0
    image_path: str = ""
    parser: str = ""
    pipeline_version: str = ""
    chunk_id: str = ""

    def to_entity(self) -> dict:
        return {
            "id": self.id, "file_key": self.file_key, "source": self.source, "modality": self.modality,
            "text": _truncate_utf8(self.text, MAX_TEXT), "vector": self.vector, "page": int(self.page),
            "lineage": {"bbox": list(self.bbox) if self.bbox else None},
            "t_start": float(self.t_start), "t_end": float(self.t_end),
            "image_path": self.image_path[:2048], "parser": self.parser[:128],
            "pipeline_version": self.pipeline_version[:32], "chunk_id": self.chunk_id[:64],
        }


def _truncate_utf8(s: str, limit: int) -> str:
    b = s.encode("utf-8", "ignore")
    return s if len(b) <= limit else b[: limit - 4].decode("utf-8", "ignore")


def quote(value: str) -> str:
    """A Milvus filter string literal (Milvus Lite has no filter templating)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _is_lock_error(e: BaseException | None) -> bool:
    """pymilvus wraps Lite's DataDirLockedError in a generic "Open local milvus failed"."""
    seen = 0
    while e is not None and seen < 10:
        if type(e).__name__ == "DataDirLockedError" or "holds the lock" in str(e):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def _lite_dir_locked(uri: str) -> bool:
    """After a failed open: is a Lite data dir locked by another process? (pymilvus only logs why.)"""
    import fcntl
    import os

    from mmrag.config import is_lite_uri

    if not is_lite_uri(uri) or not os.path.isdir(uri):
        return False
    try:
        from milvus_lite.db import LOCK_FILENAME
    except ImportError:
        return False
    path = os.path.join(uri, LOCK_FILENAME)
    if not os.path.exists(path):
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


class _QuietLockErrors(logging.Filter):
    """Milvus Lite logs a full traceback when its data dir is locked; we raise IndexBusyError instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not _is_lock_error(exc)


logging.getLogger("milvus_lite.server_manager").addFilter(_QuietLockErrors())
# Milvus Lite's in-process gRPC server has no AllocTimestamp; clients that probe it get a fallback,
# but the server logs a traceback for each probe.
logging.getLogger("grpc._server").addFilter(
    lambda r: "Method not implemented" not in r.getMessage() and "AllocTimestamp" not in str(r.exc_info))


def connect(uri: str, token: str = "", db_name: str = "", wait_s: float = 0.0):
    """A process-wide client per (uri, token, db). A Milvus Lite data dir is first taken for this process
    (`mmrag.index.lite_lock`, waiting up to `wait_s` for another process to finish with it); a Lite
    lock still held by a process that did not take mmrag's (a `milvus-lite server`, or one just exiting)
    is retried until the same deadline, then raised as IndexBusyError."""
    from mmrag.config import is_lite_uri
    from mmrag.index import lite_lock

    key = (uri, token, db_name)
    with _clients_lock:
        if key in _clients:
            return _clients[key]
    deadline = time.monotonic() + wait_s
    if is_lite_uri(uri):
        lite_lock.hold(uri, wait_s, say=log.warning)
        from mmrag.index.lite_pings import permit_pings

        permit_pings()  # the server Milvus Lite starts in this process for the path
    with _clients_lock:
        if key in _clients:
            return _clients[key]
        from pymilvus import MilvusClient

        kwargs = {"uri": uri}
        if token:
            kwargs["token"] = token
        if db_name:
            kwargs["db_name"] = db_name
        while True:
            try:
                client = MilvusClient(**kwargs)
                break
            except Exception as e:
                if not (_is_lock_error(e) or _lite_dir_locked(uri)):
                    raise
                if time.monotonic() < deadline:
                    time.sleep(1.0)
                    continue
                raise IndexBusyError(
                    f"the Milvus Lite index at {uri} is in use by another process ({lite_lock.holder(uri)}). "
                    "Milvus Lite allows one process at a time: retry when it finishes, or point "
                    "MMRAG_MILVUS_URI at a Milvus server for concurrent access."
                ) from e
        _clients[key] = client
        return client


class MilvusStore:
    def __init__(self, uri: str, token: str = "", db_name: str = "", prefix: str = "mmrag", wait_s: float = 0.0):
        self.uri = uri
        self.client = connect(uri, token, db_name, wait_s)
        self.prefix = prefix

    def collection(self, modality: str) -> str:
        return f"{self.prefix}_{modality}"

    def _loaded(self, modality: str) -> str | None:
        """The collection's name once it is loaded for search/query (a new process finds it released)."""
        name = self.collection(modality)
        key = (self.uri, name)
        if key in _loaded_collections:
            return name
        if not self.client.has_collection(name):
            return None
        self.client.load_collection(name)
        _loaded_collections.add(key)
        return name

    # -- schema ----------------------------------------------------------------------------------
    def ensure_collections(self, text_dim: int, image_dim: int | None) -> None:
        """Create collections and indexes if absent (idempotent); check dimensions if present."""
        self._ensure(TEXT, text_dim, bm25=True)
        if image_dim:
            self._ensure(IMAGE, image_dim, bm25=False)

    def ensure_pages(self, dim: int) -> None:
        """The page collection (visual page retrieval), as `ensure_collections`."""
        self._ensure(PAGE, dim, bm25=False)

    def _ensure(self, modality: str, dim: int, bm25: bool) -> None:
        from pymilvus import DataType, Function, FunctionType

        name = self.collection(modality)
        if self.client.has_collection(name):
            self._check_dim(name, dim)
            return
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("file_key", DataType.VARCHAR, max_length=1024)
        schema.add_field("source", DataType.VARCHAR, max_length=256, is_partition_key=True)
        schema.add_field("modality", DataType.VARCHAR, max_length=32)
        schema.add_field("page", DataType.INT64)
        schema.add_field("t_start", DataType.FLOAT)
        schema.add_field("t_end", DataType.FLOAT)
        schema.add_field("lineage", DataType.JSON)
        schema.add_field("image_path", DataType.VARCHAR, max_length=2048)
        schema.add_field("parser", DataType.VARCHAR, max_length=128)
        schema.add_field("pipeline_version", DataType.VARCHAR, max_length=32)
        schema.add_field("chunk_id", DataType.VARCHAR, max_length=64)
        schema.add_field("text", DataType.VARCHAR, max_length=MAX_TEXT, enable_analyzer=bm25)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        index = self.client.prepare_index_params()
        index.add_index("vector", index_type="AUTOINDEX", metric_type="COSINE")
        if bm25:
            schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
            schema.add_function(Function(name="bm25", function_type=FunctionType.BM25,
                                         input_field_names=["text"], output_field_names=["sparse"]))
            index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
        try:
            self.client.create_collection(name, schema=schema, index_params=index, num_partitions=16)
        except Exception:
            # another process (a second ingest, a worker on another host) created it first: use theirs
            if not self.client.has_collection(name):
                raise
            log.info("collection %s was created by another process meanwhile", name)
            from tenacity import Retrying, retry_if_not_exception_type, stop_after_delay, wait_fixed

            # its index may still be on the way: loading is retried for 30 s (a dimension mismatch is not)
            for attempt in Retrying(stop=stop_after_delay(30), wait=wait_fixed(0.5), reraise=True,
                                    retry=retry_if_not_exception_type(ValueError)):
                with attempt:
                    self._check_dim(name, dim)
            return
        self.client.load_collection(name)

    def _check_dim(self, name: str, dim: int) -> None:
        desc = self.client.describe_collection(name)
        have = next(f["params"].get("dim") for f in desc["fields"] if f["name"] == "vector")
        if int(have) != int(dim):
            raise ValueError(
                f"collection {name} holds {have}-d vectors but the embedder gives {dim}-d: "
                "set MMRAG_COLLECTION_PREFIX to start a new index for this model"
            )
        self.client.load_collection(name)

    def has(self, modality: str) -> bool:
        return self.client.has_collection(self.collection(modality))

    # -- writes ----------------------------------------------------------------------------------
    def replace_file(self, modality: str, file_key: str, rows: list[Row]) -> dict:
        """Make `file_key`'s rows in this collection exactly `rows` (idempotent)."""
        name = self.collection(modality)
        if not self.client.has_collection(name):
            return {"upserted": 0, "deleted": 0}
        ents = [r.to_entity() for r in rows]
        for i in range(0, len(ents), _INSERT_BATCH):
            self.client.upsert(name, ents[i : i + _INSERT_BATCH])
        keep = [r.id for r in rows]
        old = self.ids_for_file(modality, file_key)
        stale = sorted(set(old) - set(keep))
        if stale:
            self.client.delete(name, ids=stale)
        return {"upserted": len(ents), "deleted": len(stale)}

    def flush(self) -> None:
        """Seal what was written so it is indexed: on Milvus Lite, searches over unsealed rows run
        ~30× slower (10k rows: p50 1118 ms before, 37 ms after), also in the writing process."""
        for modality in COLLECTIONS:
            name = self.collection(modality)
            if self.client.has_collection(name):
                self.client.flush(name)

    def delete_file(self, file_key: str) -> int:
        n = 0
        for modality in COLLECTIONS:
            name = self.collection(modality)
            if self.client.has_collection(name):
                ids = self.ids_for_file(modality, file_key)
                if ids:
                    self.client.delete(name, ids=ids)
                    n += len(ids)
        return n

    # -- reads -----------------------------------------------------------------------------------
    def image_paths(self) -> set[str]:
        """Every `image_path` the index points to (both collections): what blob GC must keep."""
        return {r["image_path"] for modality in (TEXT, IMAGE)
                for r in self.all_rows(modality, ["image_path"], 'image_path != ""')}

    def all_rows(self, modality: str, fields: list[str], filter: str = "") -> Iterator[dict]:
        """Every row of a collection (the given fields and the id), in batches of 1,000."""
        if (name := self._loaded(modality)) is None:
            return
        it = self.client.query_iterator(name, batch_size=1000, filter=filter, output_fields=fields)
        try:
            while batch := it.next():
                yield from batch
        finally:
            it.close()

    def delete_ids(self, modality: str, ids: list[str]) -> int:
        name = self.collection(modality)
        if not ids or not self.client.has_collection(name):
            return 0
        self.client.delete(name, ids=list(ids))
        return len(ids)

    def image_row(self, row_id: str) -> dict | None:
        """The row `row_id` (either collection) if it has an image: its file key, source and image_path."""
        for modality in (IMAGE, TEXT):
            if (name := self._loaded(modality)) is None:
                continue
            res = self.client.query(name, filter=f"id == {quote(row_id)} and image_path != \"\"",
                                    output_fields=["file_key", "source", "image_path"], limit=1)
            if res:
                return res[0]
        return None

    def ids_for_file(self, modality: str, file_key: str) -> list[str]:
        name = self._loaded(modality)
        if name is None:
            return []
        res = self.client.query(name, filter=f"file_key == {quote(file_key)}",
                                output_fields=["id"], limit=16384)
        return [r["id"] for r in res]

    def count(self, modality: str, filter: str = "") -> int:
        name = self._loaded(modality)
        if name is None:
            return 0
        res = self.client.query(name, filter=filter, output_fields=["count(*)"])
        return int(res[0]["count(*)"]) if res else 0

    _FIELDS = ["file_key", "source", "modality", "page", "t_start", "t_end", "lineage", "image_path",
               "parser", "pipeline_version", "text", "chunk_id"]

    def rows_with_vectors(self, modality: str, filter: str, limit: int) -> list[dict]:
        """Up to `limit` rows matching `filter`, with the search fields and their vectors."""
        name = self._loaded(modality)
        if name is None:
            return []
        rows = self.client.query(name, filter=filter, output_fields=[*self._FIELDS, "vector"], limit=limit)
        for r in rows:
            if isinstance(r.get("lineage"), str):
                r["lineage"] = json.loads(r["lineage"])
        return [dict(r) for r in rows]

    def search(self, modality: str, vector: list[float], top_k: int = 10, filter: str = "") -> list[dict]:
        """Dense search (cosine)."""
        name = self._loaded(modality)
        if name is None:
            return []
        res = self.client.search(name, data=[vector], anns_field="vector", limit=top_k, filter=filter,
                                 output_fields=self._FIELDS, search_params={"metric_type": "COSINE"})
        return _hits(res)

    def bm25_search(self, query: str, top_k: int = 10, filter: str = "") -> list[dict]:
        """BM25 full-text search over the text collection (Milvus's analyzer, no vectors)."""
        name = self._loaded(TEXT)
        if name is None:
            return []
        res = self.client.search(name, data=[query], anns_field="sparse", limit=top_k, filter=filter,
                                 output_fields=self._FIELDS, search_params={"metric_type": "BM25"})
        hits = _hits(res)
        for h in hits:  # Milvus Lite reports BM25 scores negated (best first, most negative)
            h["score"] = abs(h["score"])
        return hits


def _hits(res) -> list[dict]:
    hits = []
    for h in res[0]:
        ent = dict(h["entity"])
        ent["id"] = h["id"]
        ent["score"] = float(h["distance"])
        if isinstance(ent.get("lineage"), str):
            ent["lineage"] = json.loads(ent["lineage"])
        hits.append(ent)
    return hits
