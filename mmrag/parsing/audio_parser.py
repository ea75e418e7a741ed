"""Audio files → timed transcript blocks. Silence gives no blocks and a note, not an error."""

from __future__ import annotations

from pathlib import Path

from mmrag.blocks import Block, BlockKind
from mmrag.media import MediaError, Transcriber
from mmrag.parsing.errors import ParseError


def parse_audio(path: Path, transcriber: Transcriber) -> tuple[list[Block], list[str], None]:
    try:
        tr = transcriber.transcribe(path)
    except MediaError as e:
        raise ParseError(str(e)) from e
    blocks = [
        Block(id=f"b{i:05d}", kind=BlockKind.TRANSCRIPT, order=i, text=s.text, t_start=round(s.start, 3),
              t_end=round(s.end, 3), meta={"language": tr.language})
        for i, s in enumerate(tr.segments)
    ]
    warnings = [] if blocks else [f"no speech detected in {tr.duration:.1f} s of audio: indexed with an empty transcript"]
    return blocks, warnings, None
