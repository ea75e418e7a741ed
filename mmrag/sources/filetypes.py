"""File type from content (magic bytes via `filetype`), reconciled with the extension.

The extension alone lies (a PNG named .txt, random bytes named .pdf); content alone cannot tell
DOCX from XLSX or Markdown from plain text. We sniff first and use the extension to refine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import filetype

# kind -> extensions that we parse as that kind
DOCUMENT_KINDS = {
    "pdf": {".pdf"},
    "docx": {".docx"},
    "pptx": {".pptx"},
    "xlsx": {".xlsx"},
    "html": {".html", ".htm", ".xhtml"},
    "markdown": {".md", ".markdown"},
    "csv": {".csv"},
    "text": {".txt", ".text", ".rst"},
    "image": {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif"},
    "audio": {".wav", ".mp3", ".flac", ".ogg", ".m4a", ".aac"},
    "video": {".mp4", ".mov", ".avi", ".mkv", ".webm"},
    "subtitles": {".vtt", ".srt"},
}
_BY_EXT = {ext: kind for kind, exts in DOCUMENT_KINDS.items() for ext in exts}
_OOXML = {"docx", "pptx", "xlsx"}


def kind_by_name(name: str) -> str:
    """The kind a file's extension says (its content may say otherwise: `detect`)."""
    return _BY_EXT.get(Path(name).suffix.lower(), "unknown")


@dataclass(frozen=True)
class Detected:
    kind: str  # one of DOCUMENT_KINDS, or "unknown"
    mime: str
    note: str = ""  # set when content and extension disagree


def detect(path: Path, head: bytes | None = None) -> Detected:
    if head is None:
        with open(path, "rb") as f:
            head = f.read(8192)
    ext = path.suffix.lower()
    by_ext = kind_by_name(path.name)
    if not head:
        return Detected(by_ext, "application/x-empty", "empty file")
    guess = filetype.guess(head)
    if guess is None:
        # Text-like formats have no magic bytes: trust the extension if the bytes look like text.
        if by_ext in ("html", "markdown", "csv", "text", "subtitles"):
            return Detected(by_ext, f"text/{by_ext}")
        if by_ext == "pdf" and head.lstrip()[:5] != b"%PDF-":
            return Detected("unknown", "application/octet-stream", "named .pdf but not a PDF")
        if by_ext == "pdf":
            return Detected("pdf", "application/pdf")
        return Detected("unknown", "application/octet-stream", f"unrecognised content for {ext or 'no extension'}")
    mime = guess.mime
    if mime == "application/pdf":
        kind = "pdf"
    elif mime.startswith("image/"):
        kind = "image"
    elif mime.startswith("audio/"):
        kind = "audio"
    elif mime.startswith("video/"):
        # An .mp4 holding only audio still sniffs as video; the media parser tells them apart.
        kind = "audio" if by_ext in DOCUMENT_KINDS["audio"] else "video"
    elif mime in ("application/zip",) or by_ext in _OOXML:
        kind = by_ext if by_ext in _OOXML else "unknown"
    elif guess.extension in ("docx", "pptx", "xlsx"):
        kind = guess.extension
    else:
        kind = "unknown"
    note = ""
    if by_ext != "unknown" and kind != by_ext:
        note = f"content is {mime}, extension says {by_ext}"
    return Detected(kind, mime, note)
