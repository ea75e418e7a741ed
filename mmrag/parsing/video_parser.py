"""Video → frames sampled at a fixed rate (image blocks with their timestamp) + the soundtrack's
timed transcript. A file with audio only (an .mp4 holding just sound) is transcribed as audio."""

from __future__ import annotations

import tempfile
from pathlib import Path

from mmrag.blobs import BlobStore
from mmrag.blocks import Block, BlockKind
from mmrag.media import MediaError, Transcriber, extract_frames, hms, probe
from mmrag.parsing.audio_parser import parse_audio
from mmrag.parsing.errors import ParseError


def parse_video(path: Path, blobs: BlobStore, transcriber: Transcriber, fps: float = 0.2):
    try:
        info = probe(path)
    except MediaError as e:
        raise ParseError(str(e)) from e
    if not info["video"]:
        if not info["audio"]:
            raise ParseError("the file has neither a video nor an audio stream")
        blocks, warnings, _ = parse_audio(path, transcriber)
        return blocks, ["the file holds audio only: transcribed as audio", *warnings], None
    warnings: list[str] = []
    blocks: list[Block] = []
    if info["audio"]:
        blocks, w, _ = parse_audio(path, transcriber)
        warnings += w
    else:
        warnings.append("no audio track: frames only")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            frames = extract_frames(path, fps, Path(tmp))
        except MediaError as e:
            raise ParseError(str(e)) from e
        for t, frame in frames:
            _, stored = blobs.put_bytes(frame.read_bytes(), ".png")
            blocks.append(Block(id=f"f{len(blocks):05d}", kind=BlockKind.IMAGE, order=len(blocks),
                                caption=f"Frame at {hms(t)}", image_path=str(stored), t_start=t, t_end=t,
                                meta={"frame_fps": fps}))
    if not frames:
        warnings.append("no frames could be decoded")
    blocks.sort(key=lambda b: (b.t_start or 0.0, b.kind != BlockKind.TRANSCRIPT))
    for i, b in enumerate(blocks):
        b.order = i
    return blocks, warnings, None
