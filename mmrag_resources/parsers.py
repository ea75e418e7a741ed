"""Parsers: Docling, pypdfium2 + Tesseract (offline PDF/image path), MinerU — chosen per file kind."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from dagster import ConfigurableResource

from mmrag.blobs import BlobStore
from mmrag.blocks import ParsedDocument
from mmrag.filetypes import Detected
from mmrag.parsing import parse_file, parser_for
from mmrag_resources._settings import resolved


class ParserResource(ConfigurableResource):
    """`pdf_parser`: auto (Docling's models if on disk, else pypdfium2), docling, pypdfium2, mineru.
    `video_fps`: frames sampled per second of video (MMRAG_VIDEO_FPS, default 0.2)."""

    pdf_parser: Optional[str] = None
    video_fps: Optional[float] = None

    def settings(self):
        return resolved(pdf_parser=self.pdf_parser, video_fps=self.video_fps)

    def parser_name(self, kind: str) -> str:
        return parser_for(kind, self.settings().pdf_parser)

    def parse(self, path: Path, detected: Detected, blobs: BlobStore, **ident) -> ParsedDocument:
        s = self.settings()
        return parse_file(path, detected, blobs, pdf_parser=s.pdf_parser, video_fps=s.video_fps, **ident)
