"""The offline PDF path: pypdfium2 text lines grouped into paragraphs, embedded images, OCR fallback.

Used when Docling's layout model is not on disk (it comes from a model hub). Text is kept with its
page and bbox; embedded raster images become image blocks (with a caption when a "Figure N" line
sits right below or above them); a page with images but no text layer is OCR'd with Tesseract.
Links and remote references inside the PDF are never followed.
"""

from __future__ import annotations

import io
import re
from importlib.metadata import version
from pathlib import Path

from mmrag.blocks import Block, BlockKind
from mmrag.parsing.errors import ParseError, SkipFile
from mmrag.sources.blobs import BlobStore

PDFIUM_VERSION = version("pypdfium2")
_CAPTION = re.compile(r"^\s*(fig(ure)?|table|tab)\.?\s*\d+", re.IGNORECASE)
MIN_IMAGE_PX = 48


def _lines(textpage, height: float) -> list[tuple[tuple[float, float, float, float], str]]:
    out = []
    for i in range(textpage.count_rects()):
        l, b, r, t = textpage.get_rect(i)
        text = textpage.get_text_bounded(l, b, r, t).strip()
        if text:
            out.append(((l, height - t, r, height - b), text))  # top-left origin
    return out


def _paragraphs(lines):
    """Merge consecutive lines whose vertical gap is small into paragraphs."""
    paras: list[tuple[list[float], list[str]]] = []
    prev = None
    for (l, t, r, b), text in lines:
        h = max(1.0, b - t)
        if prev is not None:
            pl, pt, pr, pb = paras[-1][0]
            gap = t - prev[3]
            if -h < gap < 0.8 * h and not _CAPTION.match(text):
                paras[-1][0][:] = [min(pl, l), min(pt, t), max(pr, r), max(pb, b)]
                paras[-1][1].append(text)
                prev = (l, t, r, b)
                continue
        paras.append(([l, t, r, b], [text]))
        prev = (l, t, r, b)
    return [(tuple(bb), " ".join(ts)) for bb, ts in paras]


def parse_pdf(path: Path, blobs: BlobStore, ocr=None) -> tuple[list[Block], list[str], int]:
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    if path.stat().st_size == 0:
        raise SkipFile("empty file")
    try:
        pdf = pdfium.PdfDocument(str(path))
    except pdfium.PdfiumError as e:
        msg = str(e)
        if "password" in msg.lower():
            raise ParseError("the PDF is password-protected; mmrag does not index encrypted files") from e
        raise ParseError(f"not a readable PDF ({msg})") from e
    blocks: list[Block] = []
    warnings: list[str] = []

    def add(kind, text, page, bbox, **kw):
        blocks.append(Block(id=f"b{len(blocks):05d}", kind=kind, order=len(blocks), text=text, page=page, bbox=bbox, **kw))

    try:
        n_pages = len(pdf)
        for pno in range(n_pages):
            page = pdf[pno]
            width, height = page.get_size()
            try:
                paras = _paragraphs(_lines(page.get_textpage(), height))
            except pdfium.PdfiumError as e:
                warnings.append(f"page {pno + 1}: text unreadable ({e})")
                paras = []
            images = []
            for obj in page.get_objects(filter=(pdfium_c.FPDF_PAGEOBJ_IMAGE,), max_depth=3):
                try:
                    l, b, r, t = obj.get_bounds()
                    pil = obj.get_bitmap(render=False).to_pil()
                except Exception as e:  # malformed image streams: keep the page's text
                    warnings.append(f"page {pno + 1}: an image could not be decoded ({e})")
                    continue
                if min(pil.size) < MIN_IMAGE_PX:
                    continue
                buf = io.BytesIO()
                pil.convert("RGB").save(buf, format="PNG")
                _, p = blobs.put_bytes(buf.getvalue(), ".png")
                images.append(((l, height - t, r, height - b), str(p)))
            if not paras and images and ocr is not None:
                text = ocr(page.render(scale=2).to_pil())
                if text.strip():
                    paras = [((0.0, 0.0, width, height), text.strip())]
                    warnings.append(f"page {pno + 1}: no text layer, OCR'd")
            # Interleave images with text by vertical position; attach the nearest caption line.
            used_captions = set()
            items = [("text", bb, t) for bb, t in paras] + [("image", bb, p) for bb, p in images]
            items.sort(key=lambda it: (it[1][1], it[1][0]))
            for kind, bb, payload in items:
                if kind == "image":
                    caption = ""
                    for i, (pbb, ptext) in enumerate(paras):
                        near = (0 <= pbb[1] - bb[3] < 40) or (0 <= bb[1] - pbb[3] < 40)
                        if near and _CAPTION.match(ptext) and i not in used_captions:
                            caption, _ = ptext, used_captions.add(i)
                            break
                    add(BlockKind.IMAGE, "", pno, bb, caption=caption, image_path=payload)
                else:
                    add(BlockKind.TEXT, payload, pno, bb)
    finally:
        pdf.close()
    if not any(b.text for b in blocks) and not any(b.image_path for b in blocks):
        raise SkipFile("the PDF has no text layer and no images to OCR")
    return blocks, warnings, n_pages
