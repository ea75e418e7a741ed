"""Standalone images: the picture itself (for CLIP and the VLM) plus its text by Tesseract OCR."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

from mmrag.blocks import Block, BlockKind
from mmrag.parsing.errors import ParseError
from mmrag.sources.blobs import BlobStore


def tesseract_available() -> bool:
    return shutil.which("tesseract") is not None


def ocr_image(img) -> str:
    """OCR a PIL image; empty string when Tesseract is not installed (noted by the caller)."""
    if not tesseract_available():
        return ""
    import pytesseract

    return pytesseract.image_to_string(img.convert("RGB"), timeout=120)


def parse_image(path: Path, blobs: BlobStore) -> tuple[list[Block], list[str], int]:
    from PIL import Image, UnidentifiedImageError

    warnings: list[str] = []
    try:
        with Image.open(path) as img:
            img.load()
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ParseError(f"the image cannot be decoded: {e}") from e
    buf = io.BytesIO()
    rgb.save(buf, format="PNG")
    _, stored = blobs.put_bytes(buf.getvalue(), ".png")
    if tesseract_available():
        text = ocr_image(rgb).strip()
    else:
        text = ""
        warnings.append("tesseract not installed (Debian: tesseract-ocr): no OCR text")
    w, h = rgb.size
    blocks = [
        Block(id="b00000", kind=BlockKind.IMAGE, order=0, page=0, bbox=(0, 0, w, h), caption=path.name,
              image_path=str(stored), meta={"ocr_text": text, "width": w, "height": h})
    ]
    if text:
        blocks.append(Block(id="b00001", kind=BlockKind.TEXT, order=1, page=0, text=text, meta={"ocr": True}))
    return blocks, warnings, 1
