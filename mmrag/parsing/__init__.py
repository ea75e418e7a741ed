"""Choose a parser per file kind and turn one snapshotted source file into a ParsedDocument.

| kind                                   | parser                                               |
|----------------------------------------|------------------------------------------------------|
| docx, pptx, xlsx, html, markdown, csv  | Docling (offline)                                    |
| pdf                                    | Docling's model pipeline if its models are on disk,  |
|                                        | else pypdfium2 text + images (+ Tesseract OCR);      |
|                                        | MinerU when MMRAG_PDF_PARSER=mineru                  |
| image                                  | Tesseract OCR + the image itself                     |
| text                                   | paragraphs                                           |
| audio                                  | Whisper (faster-whisper tiny.en offline by default)  |
| video                                  | ffmpeg frames (rate + scene changes, deduplicated,   |
|                                        | OCR) + transcript                                    |
| audio/video transcript                 | sidecar or embedded subtitles, else Whisper          |
| subtitles (.vtt, .srt) without media   | webvtt-py: a timed transcript                        |
"""

from __future__ import annotations

import re
import tempfile
from functools import lru_cache
from pathlib import Path

from mmrag.blocks import Block, BlockKind, ParsedDocument
from mmrag.parsing.errors import ParseError, SkipFile
from mmrag.sources.blobs import BlobStore
from mmrag.sources.filetypes import Detected

__all__ = ["ParseError", "SkipFile", "parse_file", "parser_for"]


@lru_cache(maxsize=1)
def _docling_pdf_ok() -> bool:
    from mmrag.parsing.docling_parser import pdf_models_available

    return pdf_models_available()


def parser_for(kind: str, pdf_parser: str = "auto") -> str:
    if kind in ("docx", "pptx", "xlsx", "html", "markdown", "csv"):
        return "docling"
    if kind == "pdf":
        if pdf_parser == "auto":
            return "docling" if _docling_pdf_ok() else "pypdfium2"
        return pdf_parser
    if kind == "image":
        return "tesseract"
    if kind == "text":
        return "text"
    if kind == "audio":
        return "whisper"
    if kind == "video":
        return "ffmpeg+whisper"
    if kind == "subtitles":
        return "subtitles"
    return "none"


def _parser_version(name: str) -> str:
    from importlib.metadata import version

    if name == "docling":
        return version("docling")
    if name == "pypdfium2":
        return version("pypdfium2")
    if name == "subtitles":
        return "webvtt-py " + version("webvtt-py")
    if name == "mineru":
        from mmrag.parsing.mineru_parser import mineru_version

        return mineru_version()
    if name == "tesseract":
        import shutil
        import subprocess

        exe = shutil.which("tesseract")
        if not exe:
            return "absent"
        out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.split()
        return out[1] if len(out) > 1 else "unknown"
    return "builtin"


def _decode_text(path: Path, warnings: list[str]) -> str:
    raw = path.read_bytes()
    if raw[:2] in _UTF16_BOMS:
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError:
            pass
    raw = _drop_nul(raw, warnings, bom_ok=False)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        warnings.append(f"invalid UTF-8 at byte {e.start}: undecodable bytes replaced with U+FFFD")
        return raw.decode("utf-8", errors="replace")


_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def _drop_nul(raw: bytes, warnings: list[str], bom_ok: bool = True) -> bytes:
    """NUL bytes have no place in UTF-8 text (parsers and stores stop or choke on them): removed,
    with a warning. UTF-16 (with its BOM) is made of them and stays as it is."""
    if b"\x00" not in raw or (bom_ok and raw[:2] in _UTF16_BOMS):
        return raw
    n = raw.count(b"\x00")
    warnings.append(f"{n} NUL byte{'s' if n > 1 else ''} removed")
    return raw.replace(b"\x00", b"")


# Control characters (PDF text layers carry some) are invalid in XML: LightRAG's GraphML file would
# be cut short at the first one. Tab, newline and carriage return stay.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffe\uffff]")


def clean_text(text: str) -> str:
    return _CONTROL.sub(" ", text) if text else text


def _text_blocks(text: str) -> list[Block]:
    paras = [p.strip() for p in text.replace("\r\n", "\n").split("\n\n") if p.strip()]
    return [Block(id=f"b{i:05d}", kind=BlockKind.TEXT, order=i, text=p) for i, p in enumerate(paras)]


def parse_file(
    path: Path,
    detected: Detected,
    blobs: BlobStore,
    *,
    file_key: str,
    source: str,
    rel_path: str,
    content_hash: str,
    pdf_parser: str = "auto",
    transcriber=None,
    frames=None,
    sidecars=(),
) -> ParsedDocument:
    """Parse a snapshotted file. Raises SkipFile or ParseError with a reason a person can act on.
    Media only: `frames` (video_parser.FrameOptions), `sidecars` [(rel path, snapshot, tag)] of
    subtitle files that stand in for Whisper."""
    kind = detected.kind
    warnings: list[str] = [detected.note] if detected.note else []
    if detected.mime == "application/x-empty":
        raise SkipFile("empty file")
    if kind == "unknown":
        raise SkipFile(f"unsupported or unrecognised file type ({detected.note or detected.mime})")
    parser = parser_for(kind, pdf_parser)
    pages, parser_version = None, ""
    if parser == "docling":
        from mmrag.parsing.docling_parser import parse_with_docling

        if kind == "markdown":
            # Docling would reject invalid UTF-8; index the readable text and say what was replaced.
            text = _decode_text(path, warnings)
            with tempfile.TemporaryDirectory() as tmp:
                clean = Path(tmp) / (Path(rel_path).stem + ".md")
                clean.write_text(text, encoding="utf-8")
                blocks, w, pages = parse_with_docling(clean, blobs)
        elif kind in ("html", "csv") and b"\x00" in (raw := path.read_bytes()):
            with tempfile.TemporaryDirectory() as tmp:
                clean = Path(tmp) / Path(rel_path).name
                clean.write_bytes(_drop_nul(raw, warnings))
                blocks, w, pages = parse_with_docling(clean, blobs)
        else:
            blocks, w, pages = parse_with_docling(path, blobs, with_pdf_models=(kind == "pdf"))
        warnings += w
    elif parser == "pypdfium2":
        from mmrag.parsing.image_parser import ocr_image
        from mmrag.parsing.pdf_parser import parse_pdf

        blocks, w, pages = parse_pdf(path, blobs, ocr=ocr_image)
        warnings += w
    elif parser == "mineru":
        from mmrag.parsing.mineru_parser import parse_with_mineru

        blocks, w, pages = parse_with_mineru(path, blobs)
        warnings += w
    elif parser == "tesseract":
        from mmrag.parsing.image_parser import parse_image

        blocks, w, pages = parse_image(path, blobs)
        warnings += w
    elif parser in ("whisper", "ffmpeg+whisper"):
        from mmrag.parsing.audio_parser import parse_audio
        from mmrag.parsing.media import Transcriber
        from mmrag.parsing.video_parser import FrameOptions, parse_video

        transcriber = transcriber or Transcriber()
        if parser == "whisper":
            blocks, w, pages = parse_audio(path, transcriber, sidecars)
        else:
            blocks, w, pages = parse_video(path, blobs, transcriber, frames or FrameOptions(), sidecars)
        by = {b.meta.get("transcript") for b in blocks} - {None}
        asr = transcriber.model if "whisper" in by or not by else "subtitles"
        parser_version = asr if parser == "whisper" else f"ffmpeg + {asr}"
        warnings += w
    elif parser == "subtitles":
        from mmrag.parsing.audio_parser import transcript_blocks
        from mmrag.parsing.media import MediaError
        from mmrag.parsing.subtitles import read_subtitles

        try:
            blocks = transcript_blocks(read_subtitles(Path(rel_path), _decode_text(path, warnings)), transcript="subtitles")
        except MediaError as e:
            raise ParseError(str(e), transient=getattr(e, "transient", False)) from e
    elif parser == "text":
        blocks = _text_blocks(_decode_text(path, warnings))
    else:
        raise SkipFile(f"no parser for {kind}")
    for b in blocks:
        b.text, b.caption = clean_text(b.text), clean_text(b.caption)
        if "ocr_text" in b.meta:
            b.meta["ocr_text"] = clean_text(b.meta["ocr_text"])
    blocks = [b for b in blocks if b.text.strip() or b.kind.is_modal]
    if not blocks and parser not in ("whisper", "ffmpeg+whisper"):  # silence: indexed empty, with a note
        raise SkipFile("no content: the parser found no text, tables or images")
    return ParsedDocument(
        file_key=file_key, source=source, rel_path=rel_path, content_hash=content_hash, mime=detected.mime,
        parser=parser, parser_version=parser_version or _parser_version(parser), blocks=blocks,
        warnings=warnings, pages=pages,
    )
