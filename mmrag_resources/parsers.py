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
    """`pdf_parser`: auto (Docling's models if on disk, else pypdfium2), docling, pypdfium2, mineru."""

    pdf_parser: Optional[str] = None

    def settings(self):
        return resolved(pdf_parser=self.pdf_parser)

    def parser_name(self, kind: str) -> str:
        return parser_for(kind, self.settings().pdf_parser)

    def parse(self, path: Path, detected: Detected, blobs: BlobStore, **ident) -> ParsedDocument:
        return parse_file(path, detected, blobs, pdf_parser=self.settings().pdf_parser, **ident)
