"""Chunk a parsed document into retrieval units that keep their lineage.

Transcript segments (audio) are grouped into time windows instead, and their chunks carry the
window's start and end in seconds.

Blocks are packed in reading order into chunks of at most `size` tokens, never across a page or
section boundary when the chunk already has content; a block longer than `size` is split into
overlapping windows. Modal blocks (tables, figures, equations) become chunks of their own, holding
their description, so a figure's text is found by text search and points to the figure.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from mmrag.blocks import Block, BlockKind, ParsedDocument
from mmrag.ids import sha256_text
from mmrag.models.tokenizer import TOKENIZER


class Chunk(BaseModel):
    id: str = Field(description="stable within the document: 'c' + index")
    text: str
    block_ids: list[str]
    modality: str = "text"  # text | table | image | equation
    page: int | None = None
    bbox: tuple[float, float, float, float] | None = None
    section: str = ""
    image_path: str | None = None
    t_start: float | None = None
    t_end: float | None = None

    @property
    def content_hash(self) -> str:
        return sha256_text(self.text)


def _windows(text: str, size: int, overlap: int) -> list[str]:
    pieces = TOKENIZER.pieces(text)
    if len(pieces) <= size:
        return [text]
    step = max(1, size - overlap)
    out = []
    for start in range(0, len(pieces), step):
        out.append("".join(pieces[start : start + size]).strip())
        if start + size >= len(pieces):
            break
    return [w for w in out if w]


def _transcript_windows(blocks: list[Block], size: int, window_s: float) -> list[list[Block]]:
    """Consecutive segments grouped into windows of about `window_s` seconds (and at most `size`
    tokens); each window after the first repeats the previous window's last segment as overlap."""
    windows: list[list[Block]] = []
    cur: list[Block] = []
    tokens = 0
    for b in blocks:
        n = TOKENIZER.count(b.text)
        if cur and (b.t_end - cur[0].t_start > window_s or tokens + n > size):
            windows.append(cur)
            cur = [cur[-1]] if len(cur) > 1 else []
            tokens = sum(TOKENIZER.count(x.text) for x in cur)
        cur.append(b)
        tokens += n
    if cur:
        windows.append(cur)
    return windows


def chunk_document(doc: ParsedDocument, size: int = 180, overlap: int = 30, window_s: float = 45.0) -> list[Chunk]:
    chunks: list[Chunk] = []
    transcript = [b for b in doc.blocks if b.kind == BlockKind.TRANSCRIPT and b.t_start is not None]
    for win in _transcript_windows(transcript, size, window_s):
        chunks.append(Chunk(id=f"c{len(chunks):05d}", text=" ".join(b.text for b in win).strip(),
                            block_ids=[b.id for b in win], modality="transcript",
                            t_start=win[0].t_start, t_end=win[-1].t_end))
    buf: list[Block] = []
    buf_tokens = 0

    def emit(text: str, blocks: list[Block], modality: str = "text") -> None:
        text = text.strip()
        if not text:
            return
        first = blocks[0]
        chunks.append(
            Chunk(
                id=f"c{len(chunks):05d}",
                text=text,
                block_ids=[b.id for b in blocks],
                modality=modality,
                page=first.page,
                bbox=first.bbox if len(blocks) == 1 else None,
                section=first.section,
                image_path=first.image_path if modality == "image" else None,
                t_start=first.t_start, t_end=blocks[-1].t_end,
            )
        )

    def flush() -> None:
        nonlocal buf, buf_tokens
        if buf:
            heading = buf[0].section
            body = "\n".join(b.text for b in buf if b.text)
            # The heading path gives a chunk its topic when it is read (or embedded) alone.
            emit(f"{heading}\n{body}" if heading and heading not in body[: len(heading) + 2] else body, buf)
        buf, buf_tokens = [], 0

    for b in doc.blocks:
        if b.kind == BlockKind.TRANSCRIPT and b.t_start is not None:
            continue  # chunked by time window above
        if b.kind.is_modal:
            flush()
            text = b.searchable_text()
            for w in _windows(text, size, overlap):
                emit(w, [b], b.kind.value)
            continue
        if not b.text.strip():
            continue
        n = TOKENIZER.count(b.text)
        boundary = buf and (b.page != buf[-1].page or b.section != buf[-1].section or b.kind == BlockKind.TITLE)
        if buf and (boundary or buf_tokens + n > size):
            flush()
        if n > size:
            for w in _windows(b.text, size, overlap):
                emit(w, [b])
            continue
        buf.append(b)
        buf_tokens += n
    flush()
    return chunks
