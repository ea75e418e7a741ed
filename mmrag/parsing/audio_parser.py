"""Audio → timed transcript blocks, from subtitles when there are any, else from Whisper.

Order: a sidecar subtitle file (`talk.en.vtt` beside `talk.mp4`), then an embedded text subtitle
track, then Whisper. Silence gives no blocks and a note, not an error.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from mmrag.blocks import Block, BlockKind
from mmrag.parsing.errors import ParseError
from mmrag.parsing.media import MediaError, Segment, Transcriber


def transcript_blocks(segments: list[Segment], **meta) -> list[Block]:
    return [Block(id=f"b{i:05d}", kind=BlockKind.TRANSCRIPT, order=i, text=s.text, t_start=round(s.start, 3),
                  t_end=round(s.end, 3), meta=dict(meta)) for i, s in enumerate(segments)]


def _from_subtitles(path: Path, sidecars, info: dict | None) -> tuple[list[Block], str] | None:
    from mmrag.parsing.subtitles import TEXT_CODECS, extract_embedded, read_subtitles

    if sidecars:  # best first: the untagged one, then by name
        rel, snap, tag = sidecars[0]
        try:
            segs = read_subtitles(Path(rel), _read(snap))
        except MediaError as e:
            raise ParseError(f"sidecar {rel}: {e}", transient=getattr(e, "transient", False)) from e
        return transcript_blocks(segs, language=tag or None, transcript="sidecar"), f"transcript from the sidecar subtitles {rel}"
    tracks = [s for s in (info or {}).get("subtitles", []) if s["codec"] in TEXT_CODECS]
    if tracks:
        track = tracks[0]
        with tempfile.TemporaryDirectory() as tmp:
            try:
                vtt = extract_embedded(path, track, Path(tmp) / "track.vtt")
                segs = read_subtitles(vtt)
            except MediaError as e:
                raise ParseError(str(e), transient=getattr(e, "transient", False)) from e
        lang = track["language"] if track["language"] not in ("", "und") else None
        return (transcript_blocks(segs, language=lang, transcript="embedded"),
                f"transcript from the embedded subtitle track {track['index']} ({track['codec']}, {lang or 'language not tagged'})")
    return None


def _read(snapshot: str) -> str:
    return Path(snapshot).read_bytes().decode("utf-8-sig", errors="replace")


def parse_audio(path: Path, transcriber: Transcriber, sidecars=(), info: dict | None = None
                ) -> tuple[list[Block], list[str], None]:
    """`sidecars`: [(relative path, snapshot path, tag)] best first; `info`: media.probe() output
    when the caller already has it (needed for embedded subtitle tracks)."""
    subs = _from_subtitles(path, sidecars, info)
    if subs is not None:
        blocks, note = subs
        return blocks, [note] + ([] if blocks else ["the subtitles hold no cues: indexed with an empty transcript"]), None
    try:
        tr = transcriber.transcribe(path)
    except MediaError as e:
        raise ParseError(str(e), transient=getattr(e, "transient", False)) from e
    blocks = transcript_blocks(tr.segments, language=tr.language, transcript="whisper")
    warnings = [] if blocks else [f"no speech detected in {tr.duration:.1f} s of audio: indexed with an empty transcript"]
    if transcriber.language is None and tr.language_probability and not transcriber.model.endswith(".en"):
        warnings.append(f"language detected: {tr.language} (p={tr.language_probability:.2f})")
    return blocks, warnings, None
