"""Benchmark: transcription speed of the pipeline's audio path vs the raw model, in one run.

Builds a longer clip by repeating `jfk.flac` (ffmpeg), then times on the same clip, same process:
  raw      faster_whisper.WhisperModel.transcribe (the default model, the pipeline's options)
  pipeline mmrag's audio parser (Transcriber + typed transcript blocks), as parsed_blocks runs it
and prints the real-time factor (audio seconds per wall second) of each and their ratio (aim ≥ 0.9).
Video frames + CLIP per minute of video are not measured yet: video ingestion is still to come.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/media.py [--repeat 6] [--runs 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mmrag.blobs import BlobStore  # noqa: E402
from mmrag.filetypes import detect  # noqa: E402
from mmrag.media import Transcriber, _faster_whisper_path  # noqa: E402
from mmrag.parsing import parse_file  # noqa: E402


def make_clip(src: Path, repeat: int, out: Path) -> float:
    listing = out.with_suffix(".txt")
    listing.write_text("".join(f"file '{src}'\n" for _ in range(repeat)))
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(listing),
                    "-ac", "1", "-ar", "16000", str(out)], check=True)
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(out)],
                           capture_output=True, text=True, check=True)
    return float(probe.stdout.strip())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clip", default=str(REPO.parent / "shared" / "corpus" / "sample" / "jfk.flac"))
    ap.add_argument("--repeat", type=int, default=6)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="mmrag-media-bench-"))
    clip = tmp / "clip.wav"
    duration = make_clip(Path(args.clip), args.repeat, clip)

    from faster_whisper import WhisperModel

    raw_model = WhisperModel(_faster_whisper_path("tiny.en"), device="cpu", compute_type="int8")
    transcriber = Transcriber("faster-whisper", "tiny.en", model_obj=raw_model)  # same weights, loaded once
    blobs = BlobStore(tmp / "blobs")

    def raw() -> int:
        segs, _ = raw_model.transcribe(str(clip), vad_filter=True, beam_size=1)
        return len(list(segs))

    def pipeline() -> int:
        doc = parse_file(clip, detect(clip), blobs, file_key="b:clip.wav", source="b", rel_path="clip.wav",
                         content_hash="x", transcriber=transcriber)
        return len(doc.blocks)

    raw()  # warm-up (first call initialises the VAD and the decoder)
    times: dict[str, list[float]] = {"raw": [], "pipeline": []}
    for _ in range(args.runs):  # interleaved, so drift on a shared machine hits both alike
        for name, fn in (("raw", raw), ("pipeline", pipeline)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    rtf = {k: duration / v for k, v in med.items()}
    ratio = rtf["pipeline"] / rtf["raw"]
    result = {"clip_s": round(duration, 2), "runs": args.runs, "median_s": {k: round(v, 3) for k, v in med.items()},
              "rtf": {k: round(v, 2) for k, v in rtf.items()}, "pipeline_over_raw": round(ratio, 3),
              "aim_pipeline_over_raw_ge_0_9": ratio >= 0.9, "video": "not measured: video ingestion is not built yet"}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"clip: {duration:.1f} s of speech ({args.repeat}× {Path(args.clip).name}), faster-whisper tiny.en int8, "
          f"{args.runs} runs each (median)")
    print(f"  raw model   {med['raw']:6.2f} s   real-time factor {rtf['raw']:6.1f}×")
    print(f"  pipeline    {med['pipeline']:6.2f} s   real-time factor {rtf['pipeline']:6.1f}×")
    print(f"pipeline / raw speed: {ratio:.3f} (aim ≥ 0.9: {'PASS' if ratio >= 0.9 else 'FAIL'})")
    print("video frames + CLIP per minute of video: not measured (video ingestion is still to come)")


if __name__ == "__main__":
    main()
