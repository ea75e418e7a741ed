"""The typed content-block model: the contract between every stage of the pipeline.

A parser turns one source file into a `ParsedDocument` (an ordered list of `Block`s); the
description stage fills `Block.description`; the chunker and embedders read blocks; Milvus rows
and graph nodes carry a block's lineage (file, page, bbox, time range, parser).
"""

from __future__ import annotations

import hashlib
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, Field

from mmrag.ids import image_ref

# 2: ids without the data dir path, bounded graph names, hashed long doc ids; 3: table row chunks
PIPELINE_VERSION = "3"


class BlockKind(str, Enum):
    TEXT = "text"
    TITLE = "title"
    TABLE = "table"
    IMAGE = "image"
    EQUATION = "equation"
    CODE = "code"
    TRANSCRIPT = "transcript"  # a timed segment of speech (audio, video soundtrack)

    @property
    def is_modal(self) -> bool:
        """Blocks that get a model-written description (RAG-Anything's 'multimodal' items)."""
        return self in (BlockKind.TABLE, BlockKind.IMAGE, BlockKind.EQUATION)


DescriptionSource = Literal["", "vlm", "llm", "extractive"]


class Block(BaseModel):
    id: str = Field(description="stable within the document: 'b' + reading order")
    kind: BlockKind
    order: int = Field(description="reading order, 0-based")
    text: str = Field("", description="text; Markdown for tables; LaTeX for equations")
    page: int | None = Field(None, description="0-based page index where the format has pages")
    bbox: tuple[float, float, float, float] | None = Field(
        None, description="(left, top, right, bottom) in page points, top-left origin"
    )
    level: int | None = Field(None, description="heading level for titles")
    section: str = Field("", description="heading path the block sits under")
    t_start: float | None = Field(None, description="seconds from the start of the media file")
    t_end: float | None = Field(None, description="seconds from the start of the media file")
    caption: str = ""
    image_path: str | None = Field(None, description="content-addressed file under the data dir")
    image_missing: str | None = Field(
        None, description="why an image that the document references has no bytes (remote, broken)"
    )
    description: str = ""
    description_source: DescriptionSource = ""
    meta: dict[str, Any] = Field(default_factory=dict)

    def content_hash(self) -> str:
        """Hash of what a description depends on: kind, text, caption and image bytes' address."""
        h = hashlib.sha256()
        for part in (self.kind.value, self.text, self.caption, image_ref(self.image_path)):
            h.update(part.encode("utf-8", "surrogatepass"))
            h.update(b"\x00")
        return h.hexdigest()

    def searchable_text(self) -> str:
        """What this block contributes to text retrieval: its description (or its text), captioned."""
        if not self.kind.is_modal:
            return self.text.strip()
        body = self.description or self.text
        label = {"table": "Table", "image": "Figure", "equation": "Equation"}[self.kind.value]
        if self.caption and self.caption not in body:
            # "Figure 2: ..." captions name themselves; others get the kind in front.
            head = self.caption if self.caption.lower().startswith(label[:3].lower()) else f"{label}: {self.caption}"
        else:
            head = f"{label}:"
        return f"{head}\n{body}".strip()


class ParsedDocument(BaseModel):
    file_key: str
    source: str
    rel_path: str
    content_hash: str
    mime: str
    parser: str
    parser_version: str
    blocks: list[Block] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    pages: int | None = None

    @property
    def title(self) -> str:
        for b in self.blocks:
            if b.kind == BlockKind.TITLE:
                return b.text
        return self.rel_path

    def modal_blocks(self) -> list[Block]:
        return [b for b in self.blocks if b.kind.is_modal]

    def to_content_list(self) -> list[dict[str, Any]]:
        """Export as RAG-Anything's `content_list` (the format its processors and inserters read)."""
        out: list[dict[str, Any]] = []
        for b in self.blocks:
            page = b.page or 0
            if b.kind == BlockKind.IMAGE:
                out.append(
                    {
                        "type": "image",
                        "img_path": b.image_path or "",
                        "image_caption": [b.caption] if b.caption else [],
                        "image_footnote": [],
                        "page_idx": page,
                    }
                )
            elif b.kind == BlockKind.TABLE:
                out.append(
                    {
                        "type": "table",
                        "img_path": b.image_path or "",
                        "table_body": b.text,
                        "table_caption": [b.caption] if b.caption else [],
                        "table_footnote": [],
                        "page_idx": page,
                    }
                )
            elif b.kind == BlockKind.EQUATION:
                out.append({"type": "equation", "latex": b.text, "text": b.text, "text_format": "latex", "page_idx": page})
            elif b.kind == BlockKind.TRANSCRIPT:
                out.append({"type": "text", "text": f"[{b.t_start:.1f}-{b.t_end:.1f} s] {b.text}", "page_idx": page})
            elif b.kind == BlockKind.TITLE:
                out.append({"type": "text", "text": b.text, "text_level": b.level or 1, "page_idx": page})
            else:
                out.append({"type": "text", "text": b.text, "page_idx": page})
        return out

    def context_around(self, block: Block, window: int = 2, max_chars: int = 1200) -> str:
        """Nearby text (same page where known) given to the VLM with a modal item."""
        idx = next(i for i, b in enumerate(self.blocks) if b.id == block.id)
        near = []
        for b in self.blocks[max(0, idx - window) : idx + window + 1]:
            if b.id == block.id or b.kind.is_modal:
                continue
            if block.page is not None and b.page is not None and b.page != block.page:
                continue
            near.append(b.text)
        return "\n".join(near)[:max_chars]
