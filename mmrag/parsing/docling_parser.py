"""Docling for DOCX, PPTX, XLSX, HTML, Markdown, CSV (and PDFs/images when its models are present).

Remote resources are never fetched: `enable_remote_fetch` and `fetch_images` are off, so an `<img>`
pointing at a URL becomes an image block with `image_missing` set, and its caption/alt text is kept.
"""

from __future__ import annotations

import io
import logging
import threading
import warnings as warnings_mod
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path

from mmrag.blocks import Block, BlockKind
from mmrag.parsing.errors import ParseError
from mmrag.sources.blobs import BlobStore

log = logging.getLogger(__name__)
_lock = threading.Lock()

DOCLING_VERSION = version("docling")
DOCLING_KINDS = {"docx", "pptx", "xlsx", "html", "markdown", "csv"}
_TEXT_LABELS = {"text", "paragraph", "list_item", "footnote", "reference", "checkbox_selected", "checkbox_unselected"}
_SKIP_LABELS = {"page_header", "page_footer", "caption"}  # captions are attached to their table/picture


@lru_cache(maxsize=2)
def converter(with_pdf_models: bool = False):
    """One converter per process: Docling caches its pipelines inside it."""
    from docling.datamodel.backend_options import (
        HTMLBackendOptions,
        MarkdownBackendOptions,
    )
    from docling.datamodel.base_models import InputFormat
    from docling.document_converter import (
        DocumentConverter,
        HTMLFormatOption,
        MarkdownFormatOption,
    )

    no_fetch = dict(enable_remote_fetch=False, fetch_images=False)
    options = {
        InputFormat.HTML: HTMLFormatOption(backend_options=HTMLBackendOptions(**no_fetch)),
        InputFormat.MD: MarkdownFormatOption(backend_options=MarkdownBackendOptions(**no_fetch)),
    }
    allowed = [InputFormat.DOCX, InputFormat.PPTX, InputFormat.XLSX, InputFormat.HTML, InputFormat.MD, InputFormat.CSV]
    if with_pdf_models:
        allowed += [InputFormat.PDF, InputFormat.IMAGE]
    return DocumentConverter(allowed_formats=allowed, format_options=options)


def pdf_models_available() -> bool:
    """Docling's PDF pipeline needs its layout model; true only when it is already on disk."""
    try:
        from huggingface_hub import snapshot_download

        snapshot_download("docling-project/docling-layout-heron", local_files_only=True)
        return True
    except Exception:
        return False


def parse_with_docling(path: Path, blobs: BlobStore, with_pdf_models: bool = False) -> tuple[list[Block], list[str], int | None]:
    """Returns (blocks, warnings, page count)."""
    from docling.datamodel.base_models import ConversionStatus

    with _lock, warnings_mod.catch_warnings(record=True) as caught:  # the converter is not thread-safe
        warnings_mod.simplefilter("always")
        try:
            result = converter(with_pdf_models).convert(str(path), raises_on_error=False)
        except Exception as e:  # docling raises plain exceptions for corrupt packages
            raise ParseError(f"docling could not read the file: {type(e).__name__}: {e}") from e
    if result.status not in (ConversionStatus.SUCCESS, ConversionStatus.PARTIAL_SUCCESS):
        errs = "; ".join(str(e.error_message) for e in result.errors) or str(result.status)
        raise ParseError(f"docling conversion failed: {errs}")
    warnings = [f"docling: {e.error_message}" for e in result.errors]
    # Docling reports skipped parts (malformed pictures, ...) as Python warnings: keep them per file.
    warnings += sorted({f"docling: {w.message}" for w in caught if issubclass(w.category, UserWarning)})
    blocks = docling_to_blocks(result.document, blobs, warnings)
    return blocks, warnings, (result.document.num_pages() or None)


def docling_to_blocks(doc, blobs: BlobStore, warnings: list[str]) -> list[Block]:
    blocks: list[Block] = []
    headings: list[str] = []

    def add(kind: BlockKind, text: str, item, **kw) -> None:
        page, bbox = None, None
        if getattr(item, "prov", None):
            prov = item.prov[0]
            page = prov.page_no - 1
            try:
                height = doc.pages[prov.page_no].size.height
                b = prov.bbox.to_top_left_origin(height)
                bbox = (b.l, b.t, b.r, b.b)
            except Exception:
                bbox = None
        blocks.append(
            Block(id=f"b{len(blocks):05d}", kind=kind, order=len(blocks), text=text, page=page, bbox=bbox,
                  section=" > ".join(headings), **kw)
        )

    for item, _level in doc.iterate_items():
        label = item.label.value
        if label in _SKIP_LABELS:
            continue
        if label in ("title", "section_header"):
            text = (item.text or "").strip()
            if not text:
                continue
            level = 0 if label == "title" else int(getattr(item, "level", 1) or 1)
            headings[:] = headings[:level] + [text]
            add(BlockKind.TITLE, text, item, level=level + 1)
        elif label == "table":
            try:
                md = item.export_to_markdown(doc)
            except Exception as e:
                warnings.append(f"table could not be exported: {e}")
                continue
            caption = item.caption_text(doc)
            if caption and md.startswith(caption):  # the export repeats the caption above the table
                md = md[len(caption):].lstrip()
            add(BlockKind.TABLE, md, item, caption=caption)
        elif label in ("picture", "chart"):
            caption = item.caption_text(doc)
            image_path, missing = None, None
            try:
                img = item.get_image(doc)
            except Exception as e:
                img, missing = None, f"unreadable image: {e}"
            if img is not None:
                buf = io.BytesIO()
                img.convert("RGB").save(buf, format="PNG")
                _, p = blobs.put_bytes(buf.getvalue(), ".png")
                image_path = str(p)
            else:
                missing = missing or "no image bytes in the document (remote or broken reference; never fetched)"
            add(BlockKind.IMAGE, "", item, caption=caption, image_path=image_path, image_missing=missing)
        elif label == "formula":
            text = (item.text or getattr(item, "orig", "") or "").strip()
            if text:
                add(BlockKind.EQUATION, text, item)
        elif label == "code":
            if (item.text or "").strip():
                add(BlockKind.CODE, item.text, item)
        elif label in _TEXT_LABELS or hasattr(item, "text"):
            text = (getattr(item, "text", "") or "").strip()
            if text:
                add(BlockKind.TEXT, text, item)
    return blocks
