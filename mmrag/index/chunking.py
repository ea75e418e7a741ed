"""Chunk a parsed document into retrieval units that keep their lineage.

Transcript segments (audio) are grouped into time windows instead, and their chunks carry the
window's start and end in seconds.

Blocks are packed in reading order into chunks of at most `size` tokens, never across a page or
section boundary when the chunk already has content; a block longer than `size` is split into
overlapping windows. Modal blocks (tables, figures, equations) become chunks of their own, holding
their description, so a figure's text is found by text search and points to the figure.

A table in Markdown becomes row chunks: each row written as "column: value" pairs under the table's
caption and heading path, as many rows as fit, so a row's cells are found by the column names
whichever part of a long table they are in (a model-written description comes as a chunk of its own
besides). A Markdown table's own text would put the header only in the first window, and pad every
cell with spaces that cost the embedder's 256 word pieces.
"""

from __future__ import annotations

import re

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


_SEPARATOR = re.compile(r"^\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?$")


_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")  # [text](target) -> text
_COMMENT = re.compile(r"<!--.*?-->")


def _cells(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|"):
        line = line[:-1]
    return [" ".join(_COMMENT.sub(" ", _LINK.sub(r"\1", c)).split()) for c in line.split("|")]


def table_rows(md: str) -> tuple[list[str], list[list[str]], str] | None:
    """(column names, rows of cells, title) of a Markdown table, or None when `md` is not one. Header
    lines above the separator are joined per column ("Sales / 2015"); a header that is one name over
    every column (a merged title cell, as in an infobox) is the table's title, its columns unnamed.
    Link targets and HTML comments are dropped from cells (their text stays)."""
    lines = [ln for ln in md.strip().splitlines() if ln.strip()]
    sep = next((i for i, ln in enumerate(lines) if _SEPARATOR.match(ln.strip())), None)
    if not sep or not all(ln.lstrip().startswith("|") for ln in lines[:sep]):
        return None
    heads = [_cells(ln) for ln in lines[:sep]]
    width = max(len(h) for h in heads)
    cols = []
    for c in range(width):
        names = list(dict.fromkeys(h[c] for h in heads if c < len(h) and h[c]))
        cols.append(" / ".join(names))
    rows = [_cells(ln) for ln in lines[sep + 1 :] if ln.lstrip().startswith("|")]
    title = ""
    if len(cols) > 1 and len(set(cols)) == 1:
        title, cols = cols[0], [""] * len(cols)
    return (cols, rows, title) if rows else None


def row_text(cols: list[str], cells: list[str]) -> str:
    """One row as "column: value" pairs; a cell under no name stands alone (after a "Key:" cell it
    reads "Key: value"); empty cells and a merged cell's copies (the same value again under the same
    or no column name) are left out."""
    out, prev = "", ("", None)
    for i, v in enumerate(cells):
        name = cols[i] if i < len(cols) else ""
        if not v or (v, name) == prev or (v == prev[0] and not name):
            continue  # empty, or a merged cell's copy under the same (or no) column name
        prev = (v, name)
        part = f"{name}: {v}" if name and name != v else v
        out = part if not out else f"{out} {part}" if out.endswith(":") else f"{out}; {part}"
    return out


def _table_windows(head: str, cols: list[str], rows: list[list[str]], size: int) -> list[str]:
    """`head` then as many row lines as fit in `size` tokens, repeated per window; a row longer than
    a window is cut into windows of its own."""
    out, cur, used = [], [], TOKENIZER.count(head)
    for cells in rows:
        line = row_text(cols, cells)
        if not line:
            continue
        n = TOKENIZER.count(line)
        if cur and used + n > size:
            out.append("\n".join([head, *cur]))
            cur, used = [], TOKENIZER.count(head)
        if n > size:
            out += [f"{head}\n{w}" for w in _windows(line, max(size - used, 32), 0)]
            continue
        cur.append(line)
        used += n
    if cur:
        out.append("\n".join([head, *cur]))
    return out


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
            table = table_rows(b.text) if b.kind == BlockKind.TABLE else None
            if table is None or b.description_source in ("llm", "vlm"):  # a model's words about it
                for w in _windows(b.searchable_text(), size, overlap):
                    emit(w, [b], b.kind.value)
            if table is not None:
                cols, rows, title = table
                name = b.caption.strip() or title
                label = name if name.lower().startswith("tab") else f"Table: {name}" if name else "Table:"
                head = f"{b.section}\n{label}" if b.section and b.section not in label else label
                for w in _table_windows(head, cols, rows, size):
                    emit(w, [b], "table")
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
