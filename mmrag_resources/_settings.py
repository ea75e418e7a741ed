"""Resource fields left unset fall back to `Settings.from_env()`, read when a run starts."""

from __future__ import annotations

from mmrag.config import Settings


def resolved(**overrides) -> Settings:
    """Environment settings with the resource fields that were set in Dagster config on top."""
    s = Settings.from_env()
    return s.with_(**{k: v for k, v in overrides.items() if v not in (None, "")})


def pipeline_settings(parsers, llm, text_embedder, image_embedder, whisper=None) -> Settings:
    """The settings a run indexes with, from all the resources that shape the index."""
    return resolved(
        whisper_backend=getattr(whisper, "backend", None), whisper_model=getattr(whisper, "model", None),
        whisper_language=getattr(whisper, "language", None),
        pdf_parser=parsers.pdf_parser, video_fps=parsers.video_fps, video_scene_threshold=parsers.video_scene_threshold,
        frame_dedupe_distance=parsers.frame_dedupe_distance, frame_ocr=parsers.frame_ocr,
        llm_url=llm.base_url, llm_model=llm.model, vlm_model=llm.vlm_model,
        text_embed_model=text_embedder.model, text_embed_backend=text_embedder.backend,
        chunk_size=text_embedder.chunk_size, chunk_overlap=text_embedder.chunk_overlap,
        clip_model=image_embedder.model, clip_pretrained=image_embedder.pretrained,
    )
