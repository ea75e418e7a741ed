"""Parsers: Docling, pypdfium2 + Tesseract (offline PDF/image path), MinerU — chosen per file kind."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from dagster import ConfigurableResource

from mmrag.blocks import ParsedDocument
from mmrag.parsing import parse_file, parser_for
from mmrag.sources.blobs import BlobStore
from mmrag.sources.filetypes import Detected
from mmrag_resources._settings import resolved


class ParserResource(ConfigurableResource):
    """`pdf_parser`: auto (Docling's models if on disk, else pypdfium2), docling, pypdfium2, mineru.
    Video frames: `video_fps` (MMRAG_VIDEO_FPS, default 0.2), `video_scene_threshold` (ffmpeg scene
    score for extra keyframes, 0 = off), `frame_dedupe_distance` (pHash bits, -1 = keep all),
    `frame_ocr`. Unset fields come from the environment (README, Configuration)."""

    pdf_parser: Optional[str] = None
    video_fps: Optional[float] = None
    video_scene_threshold: Optional[float] = None
    frame_dedupe_distance: Optional[int] = None
    frame_ocr: Optional[bool] = None

    def settings(self):
        return resolved(pdf_parser=self.pdf_parser, video_fps=self.video_fps,
                        video_scene_threshold=self.video_scene_threshold,
                        frame_dedupe_distance=self.frame_dedupe_distance, frame_ocr=self.frame_ocr)

    def parser_name(self, kind: str) -> str:
        return parser_for(kind, self.settings().pdf_parser)

    def supervisor(self, blobs: BlobStore, whisper=None):
        """A supervised parse worker for one run (per-file time and memory limits, pre-checks;
        README, Bad inputs): `with parsers.supervisor(blobs, whisper) as sup: sup.parse(path, det, **ident)`.
        Under `mmrag up`, a client of the warm parse service with the same guarantees
        (`mmrag.parsing.service`), falling back to a worker of the run's own."""
        from mmrag.parsing.service import supervised_parser
        from mmrag.parsing.worker import WorkerConfig

        s = self.settings()
        if whisper is not None:
            w = whisper.settings()
            s = s.with_(whisper_backend=w.whisper_backend, whisper_model=w.whisper_model,
                        whisper_language=w.whisper_language)
        return supervised_parser(WorkerConfig.from_settings(s, blobs.root), s.home, s.parse_service)

    def parse(self, path: Path, detected: Detected, blobs: BlobStore, **ident) -> ParsedDocument:
        from mmrag.parsing.video_parser import FrameOptions

        s = self.settings()
        frames = FrameOptions(s.video_fps, s.video_scene_threshold, s.frame_dedupe_distance, s.frame_ocr)
        return parse_file(path, detected, blobs, pdf_parser=s.pdf_parser, frames=frames, **ident)
