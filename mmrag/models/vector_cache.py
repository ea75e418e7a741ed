"""Text vectors by content: a text the embedder has seen is not embedded again.

Keyed by (embedding model, sha256 of the text) in a SQLite file under the cache dir, as float32
bytes. It saves the embedder's work wherever the same text comes back: a file re-indexed after a
small edit (its unchanged chunks), after a setting that does not concern embeddings changed (the LLM
model is in the fingerprint: every file is re-indexed), a file moved or copied to another folder, and
LightRAG's entity and relation descriptions that several documents share. Only ingestion uses it;
questions are embedded afresh. Deleting the file is safe (it is rebuilt as texts are embedded).
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

_SCHEMA = "CREATE TABLE IF NOT EXISTS vectors (space TEXT NOT NULL, key TEXT NOT NULL, vec BLOB NOT NULL, " \
          "PRIMARY KEY (space, key))"
_BATCH = 500  # SQLite host parameters per query


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class VectorCache:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._conn() as c:
            c.execute("PRAGMA journal_mode=WAL")
            c.execute(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=60)  # one per call: callers run on several threads

    def get_many(self, space: str, keys: Iterable[str]) -> dict[str, np.ndarray]:
        keys, out = list(dict.fromkeys(keys)), {}
        with self._conn() as c:
            for i in range(0, len(keys), _BATCH):
                part = keys[i: i + _BATCH]
                rows = c.execute(f"SELECT key, vec FROM vectors WHERE space=? AND key IN ({','.join('?' * len(part))})",
                                 (space, *part)).fetchall()
                out.update((k, np.frombuffer(v, dtype=np.float32)) for k, v in rows)
        return out

    def put_many(self, space: str, items: dict[str, np.ndarray]) -> None:
        with self._conn() as c:
            c.executemany("INSERT OR REPLACE INTO vectors (space, key, vec) VALUES (?,?,?)",
                          [(space, k, np.asarray(v, dtype=np.float32).tobytes()) for k, v in items.items()])

    def through(self, space: str, keys: list[str], items: list, compute) -> tuple[np.ndarray, int]:
        """Vectors for `items` (their cache `keys`, in order): cached ones read, the others computed
        once each by `compute(list of items)` and stored. Returns (vectors, how many were computed)."""
        found = self.get_many(space, keys)
        missing = {k: it for k, it in zip(keys, items) if k not in found}
        if missing:
            fresh = dict(zip(missing, np.asarray(compute(list(missing.values())), dtype=np.float32)))
            self.put_many(space, fresh)
            found.update(fresh)
        return np.stack([found[k] for k in keys]).astype(np.float32), len(missing)


class _Cached:
    """An embedder behind a VectorCache; everything but the cached method is the wrapped one's."""

    def __init__(self, inner, cache: VectorCache, space: str):
        self.inner, self.cache, self.space = inner, cache, space
        self.hits = self.misses = 0

    def _through(self, keys: list[str], items: list, compute) -> np.ndarray:
        vecs, computed = self.cache.through(self.space, keys, items, compute)
        self.misses += computed
        self.hits += len(items) - computed
        if self.served and len(items) > computed:  # texts a server was not asked to embed
            from mmrag.models import usage

            usage.cache_hit(self.model, "embed", len(items) - computed)
        return vecs

    @property
    def served(self) -> bool:
        """Whether the inner embedder asks a server (a hit here saves a request's worth of usage)."""
        return bool(getattr(self.inner, "served", False))

    @property
    def model(self) -> str:
        """The model name the server is asked for."""
        return str(getattr(self.inner, "model", None) or getattr(self.inner, "model_name", ""))

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


class CachedTextEmbedder(_Cached):
    """A TextEmbedder whose `embed` looks each text up by its sha256 first and embeds only the
    texts it has not seen (each distinct text once)."""

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return self.inner.embed(texts)
        return self._through([text_key(t) for t in texts], texts, self.inner.embed)


def file_key(path: str) -> str:
    from mmrag.sources.blobs import hash_stream

    with open(path, "rb") as f:
        return hash_stream(f)


class CachedImageEmbedder(_Cached):
    """An ImageEmbedder whose `embed_images` looks each picture up by the sha256 of its bytes first
    (the same logo in a hundred documents is embedded once)."""

    def embed_images(self, paths: Sequence[str]) -> np.ndarray:
        paths = list(paths)
        if not paths:
            return self.inner.embed_images(paths)
        return self._through([file_key(p) for p in paths], paths, self.inner.embed_images)
