"""The bad corpus: the inputs that must not break ingestion (see tests/corpus/README.md).

Five of them are real files kept in tests/corpus/bad/; the rest are made here, byte for byte the same
every time: most are cut from, or renamed copies of, files in tests/corpus/sample/.
"""

from __future__ import annotations

import random
import shutil
import wave
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "corpus"
SAMPLE = CORPUS / "sample"
KEPT_BAD = CORPUS / "bad"


def _silence(path: Path, seconds: float = 1.0, rate: int = 44100) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x00\x00" * int(seconds * rate))


def _head(src: Path, dest: Path, n: int) -> None:
    with open(src, "rb") as f:
        dest.write_bytes(f.read(n))


def build_bad(dest: Path) -> Path:
    """Write the whole bad corpus into `dest` (a fresh folder) and return it."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(KEPT_BAD.iterdir()):
        shutil.copy(f, dest / f.name)
    (dest / "empty.pdf").write_bytes(b"")
    (dest / "random_bytes.pdf").write_bytes(random.Random(0).randbytes(50_000))
    _head(SAMPLE / "multi_page.pdf", dest / "truncated.pdf", 20_000)
    _head(SAMPLE / "sample_10s_video.mp4", dest / "truncated_video.mp4", 100_000)
    shutil.copy(SAMPLE / "example_image_01.png", dest / "looks_like_text.txt")  # a PNG named .txt
    # A UTF-16 BOM, NULs and a broken UTF-8 sequence (\xc3 then "(").
    (dest / "invalid_utf8.md").write_bytes(b"\xff\xfe\x00bad utf16\x00\x00 \xc3( invalid")
    _silence(dest / "silent_1s.wav")
    return dest
