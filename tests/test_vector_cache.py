"""The vector cache: each distinct text is embedded once per model, across calls, processes and runs."""

from __future__ import annotations

import numpy as np

from mmrag.models.vector_cache import CachedTextEmbedder, VectorCache


class _Counting:
    model_name, dim = "toy", 4

    def __init__(self):
        self.seen: list[str] = []

    def embed(self, texts):
        self.seen += list(texts)
        return np.array([[len(t), t.count("a"), 1.0, 0.5] for t in texts], dtype=np.float32).reshape(-1, 4)


def test_each_distinct_text_is_embedded_once(tmp_path):
    inner = _Counting()
    emb = CachedTextEmbedder(inner, VectorCache(tmp_path / "vectors.sqlite"), "toy")
    first = emb.embed(["alpha", "beta", "alpha"])
    assert inner.seen == ["alpha", "beta"] and first.shape == (3, 4) and np.array_equal(first[0], first[2])
    again = CachedTextEmbedder(_Counting(), VectorCache(tmp_path / "vectors.sqlite"), "toy")  # another process
    assert np.array_equal(again.embed(["beta", "alpha"]), first[[1, 0]]) and again.inner.seen == []
    other_model = CachedTextEmbedder(_Counting(), VectorCache(tmp_path / "vectors.sqlite"), "other")
    other_model.embed(["alpha"])
    assert other_model.inner.seen == ["alpha"]  # vectors are per model
    assert emb.embed([]).shape[0] == 0 and (emb.hits, emb.misses) == (1, 2)
    assert emb.model_name == "toy" and emb.dim == 4  # the rest is the wrapped embedder's


def test_cached_vectors_are_the_model_vectors(tmp_path):
    import os

    from mmrag_resources.embedders import TextEmbedderResource
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    res = TextEmbedderResource()
    plain = res.embedder(cached=False)
    texts = ["Mallards dabble in shallow water.", "The reactor is cooled by sodium."]
    cache = CachedTextEmbedder(plain, VectorCache(tmp_path / "v.sqlite"), "st:all-MiniLM-L6-v2")
    cache.embed(texts[:1])
    got = cache.embed(texts)  # one from the cache, one fresh
    assert np.allclose(got, plain.embed(texts), atol=1e-5) and got.dtype == np.float32


def test_the_same_picture_is_embedded_once(tmp_path):
    from PIL import Image

    from mmrag.models.vector_cache import CachedImageEmbedder

    class _Images:
        model_name, dim, enabled = "toy-clip", 3, True

        def __init__(self):
            self.seen = []

        def embed_images(self, paths):
            self.seen += list(paths)
            return np.array([[Image.open(p).size[0], 1.0, 0.0] for p in paths], dtype=np.float32).reshape(-1, 3)

    a, b, c = tmp_path / "logo.png", tmp_path / "copy-of-logo.png", tmp_path / "chart.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(a)
    b.write_bytes(a.read_bytes())
    Image.new("RGB", (16, 8), (9, 9, 9)).save(c)
    inner = _Images()
    emb = CachedImageEmbedder(inner, VectorCache(tmp_path / "v.sqlite"), "clip:toy")
    vecs = emb.embed_images([str(a), str(b), str(c)])
    assert len(inner.seen) == 2 and str(c) in inner.seen and np.array_equal(vecs[0], vecs[1]) and vecs[2][0] == 16
    assert emb.enabled and emb.dim == 3


def test_a_model_asked_for_by_two_threads_at_once_loads_once():
    """The parse step's warm-up thread and the embeddings step may ask for the same model at once:
    the second waits for the first's load and gets the same object."""
    import threading
    import time

    from mmrag.models.embedders import _load_once

    calls = []

    def load():
        calls.append(1)
        time.sleep(0.3)
        return object()

    key = ("test", f"model-{time.monotonic_ns()}")
    got = []
    threads = [threading.Thread(target=lambda: got.append(_load_once(key, load))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(got) == 2 and got[0] is got[1]
