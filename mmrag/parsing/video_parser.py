"""Video → frames (image blocks with their timestamp) + the soundtrack's timed transcript.

Frames: the fixed rate (`fps`, 0.2 = one every 5 s) plus scene-change keyframes, in one ffmpeg pass;
near-duplicates (perceptual hash) dropped; each kept frame stored content-addressed, with its OCR
text when Tesseract finds words in it. Transcript: sidecar or embedded subtitles, else Whisper.
A file with audio only (an .mp4 holding just sound) is transcribed as audio.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mmrag.blocks import Block, BlockKind
from mmrag.parsing.audio_parser import parse_audio
from mmrag.parsing.errors import ParseError
from mmrag.parsing.media import (
    MediaError,
    Transcriber,
    drop_near_duplicates,
    extract_frames,
    hms,
    probe,
)
from mmrag.sources.blobs import BlobStore

_WORD = re.compile(r"[^\W\d_]{3,}")


@dataclass(frozen=True)
class FrameOptions:
    fps: float = 0.2
    scene_threshold: float = 0.3  # ffmpeg scene score for a keyframe between samples; 0 = off
    dedupe_distance: int = 4  # pHash bits; -1 keeps near-duplicates
    ocr: bool = True


def frame_ocr(path: Path) -> str:
    """Tesseract's text of a frame, kept only when it reads as words (two or more of 3+ letters):
    on photos and blank frames Tesseract returns stray symbols."""
    from PIL import Image

    from mmrag.parsing.image_parser import ocr_image, tesseract_available

    if not tesseract_available():
        return ""
    with Image.open(path) as img:
        text = " ".join(ocr_image(img).split())
    return text if len(_WORD.findall(text)) >= 2 else ""


def parse_video(path: Path, blobs: BlobStore, transcriber: Transcriber, opts: FrameOptions = FrameOptions(),
                sidecars=()):
    try:
        info = probe(path)
    except MediaError as e:
        raise ParseError(str(e), transient=getattr(e, "transient", False)) from e
    if not info["video"]:
        if not info["audio"] and not sidecars:
            raise ParseError("the file has neither a video nor an audio stream")
        blocks, warnings, _ = parse_audio(path, transcriber, sidecars, info)
        return blocks, ["the file holds audio only: transcribed as audio", *warnings], None
    warnings: list[str] = []
    blocks: list[Block] = []
    if info["audio"] or sidecars or info["subtitles"]:
        blocks, w, _ = parse_audio(path, transcriber, sidecars, info)
        warnings += w
    else:
        warnings.append("no audio track: frames only")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            frames = extract_frames(path, opts.fps, Path(tmp), opts.scene_threshold)
        except MediaError as e:
            raise ParseError(str(e), transient=getattr(e, "transient", False)) from e
        kept, dropped = drop_near_duplicates(frames, opts.dedupe_distance)
        if dropped:
            warnings.append(f"{dropped} of {len(frames)} frames dropped as near-duplicates")
        for fr in kept:
            _, stored = blobs.put_bytes(fr.path.read_bytes(), ".png")
            ocr = frame_ocr(fr.path) if opts.ocr else ""
            label = "Scene change" if fr.reason == "scene" else "Frame"
            blocks.append(Block(id=f"f{len(blocks):05d}", kind=BlockKind.IMAGE, order=len(blocks),
                                caption=f"{label} at {hms(fr.t)}", image_path=str(stored), t_start=fr.t, t_end=fr.t,
                                meta={"frame_fps": opts.fps, "frame": fr.reason, "ocr_text": ocr}))
    if not frames:
        warnings.append("no frames could be decoded")
    blocks.sort(key=lambda b: (b.t_start or 0.0, b.kind != BlockKind.TRANSCRIPT))
    for i, b in enumerate(blocks):
        b.order = i
    return blocks, warnings, None
