"""Subtitles as a transcript: WebVTT and SRT files (read by webvtt-py), sidecars, embedded tracks.

A subtitle file is a *sidecar* of a media file in the same folder when its name is the media file's
stem, optionally followed by a tag: `talk.mp4` owns `talk.vtt`, `talk.en.srt`, `talk.en-US.forced.vtt`.
A media file with a sidecar (or, failing that, an embedded text subtitle track) is indexed from the
subtitles instead of Whisper; the sidecar itself is not indexed again. A subtitle file with no media
beside it is indexed on its own, as a timed transcript.
"""

from __future__ import annotations

import io
import re
import subprocess
from pathlib import Path, PurePosixPath

from mmrag.parsing.media import MediaError, Segment

SUBTITLE_EXTS = {".vtt", ".srt"}
MEDIA_EXTS = {".wav", ".mp3", ".flac", ".ogg", ".m4a", ".aac", ".mp4", ".mov", ".avi", ".mkv", ".webm"}
# Subtitle codecs ffmpeg can turn into WebVTT text; bitmap tracks (DVD, PGS) need OCR and are skipped.
TEXT_CODECS = {"subrip", "srt", "webvtt", "mov_text", "ass", "ssa", "text"}
_TAG = re.compile(r"^([A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*|forced|sdh|cc|default)$", re.I)
_MARKUP = re.compile(r"<[^>]+>|\{\\[^}]*\}")


def _split(rel: str) -> tuple[str, str, str]:
    p = PurePosixPath(rel)
    return str(p.parent), p.stem, p.suffix.lower()


def _owners(folder: str, stem: str, media_by_stem: dict[tuple[str, str], list[str]]) -> list[str]:
    """Media files that a subtitle named `stem` (without its extension) belongs to."""
    parts = stem.split(".")
    for cut in range(len(parts), 0, -1):  # `talk.en.forced` → `talk.en.forced`, `talk.en`, `talk`
        base, tags = ".".join(parts[:cut]), parts[cut:]
        if all(_TAG.match(t) for t in tags) and (folder, base) in media_by_stem:
            return media_by_stem[(folder, base)]
    return []


def pair_sidecars(rels: list[str]) -> dict[str, list[str]]:
    """Map each media path to its sidecar subtitle paths (best first: untagged, then by name), and
    each sidecar path to its media paths. Paths are relative to one source root."""
    media_by_stem: dict[tuple[str, str], list[str]] = {}
    for r in rels:
        folder, stem, ext = _split(r)
        if ext in MEDIA_EXTS:
            media_by_stem.setdefault((folder, stem), []).append(r)
    pairs: dict[str, list[str]] = {}
    for r in sorted(rels):
        folder, stem, ext = _split(r)
        if ext not in SUBTITLE_EXTS:
            continue
        for m in _owners(folder, stem, media_by_stem):
            pairs.setdefault(m, []).append(r)
            pairs.setdefault(r, []).append(m)
    for m in pairs:
        if _split(m)[2] in MEDIA_EXTS:
            pairs[m].sort(key=lambda s: (_split(s)[1] != _split(m)[1], s))
    return pairs


def sidecar_tag(sub_rel: str, media_rel: str) -> str:
    """The language-ish tag between the media stem and the extension (`talk.en.vtt` → "en")."""
    stem, media_stem = _split(sub_rel)[1], _split(media_rel)[1]
    return stem[len(media_stem) + 1:].split(".")[0] if stem.startswith(media_stem + ".") else ""


def read_subtitles(path: Path, text: str | None = None) -> list[Segment]:
    """Cues of a WebVTT or SRT file as timed segments (markup stripped, voice kept as "Name: ")."""
    import webvtt
    from webvtt.errors import MalformedFileError

    if text is None:
        text = path.read_bytes().decode("utf-8-sig", errors="replace")
    fmt = "srt" if path.suffix.lower() == ".srt" or re.match(r"\s*\d+\s*\r?\n\d\d:", text) else "vtt"
    try:
        cues = webvtt.from_buffer(io.StringIO(text), format=fmt)
    except (MalformedFileError, ValueError, IndexError) as e:
        raise MediaError(f"the subtitles cannot be read as {fmt.upper()}: {e}") from e
    out = []
    for c in cues:
        body = " ".join(_MARKUP.sub("", c.raw_text if fmt == "vtt" else c.text).split())
        voice = getattr(c, "voice", None) if fmt == "vtt" else None
        if body:
            out.append(Segment(c.start_time.in_milliseconds() / 1000, c.end_time.in_milliseconds() / 1000,
                               f"{voice}: {body}" if voice else body))
    return out


def extract_embedded(path: Path, stream: dict, out: Path) -> Path:
    """One embedded text subtitle track (a stream from `media.probe`) written as WebVTT."""
    res = subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", "-i", str(path), "-map", f"0:{stream['index']}",
                          "-f", "webvtt", str(out)], capture_output=True, text=True, timeout=600)
    if res.returncode != 0 or not out.exists():
        raise MediaError(f"the embedded subtitle track could not be read: {res.stderr.strip()[-300:]}")
    return out
