"""Benchmark: the pipeline's media paths vs the raw models on the same clips, in one run.

Audio: a longer clip made by repeating `jfk.flac` (ffmpeg), timed in the same process as
  raw      faster_whisper.WhisperModel.transcribe (the default model, the pipeline's options)
  pipeline mmrag's audio parser (Transcriber + typed transcript blocks), as parsed_blocks runs it
and printed as real-time factors (audio seconds per wall second) and their ratio (aim ≥ 0.9).

Video: a silent slideshow (six sample pictures, `--slide-s` seconds each, 24 fps, 640×480), timed as
  raw        `ffmpeg -vf fps=0.2` to PNGs + open_clip encode_image on every frame (same CLIP object)
  pipeline   mmrag's video parser (rate + scene-change keyframes, pHash dedupe, content-addressed
             frames) + ImageEmbedder on the kept frames, as parsed_blocks + embeddings run it:
             `rate only` (scene keyframes and dedupe off: the raw path's work) and `default`
and printed as wall seconds per minute of video and raw/pipeline speed ratios (aim ≥ 0.9). Frame OCR
(Tesseract, on by default) is extra work the raw path does not do: printed on its own line. CLIP
has random weights here (no hub); speed does not depend on the weights.

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

from mmrag.parsing import parse_file  # noqa: E402
from mmrag.parsing.media import Transcriber, _faster_whisper_path  # noqa: E402
from mmrag.sources.blobs import BlobStore  # noqa: E402
from mmrag.sources.filetypes import detect  # noqa: E402


def make_clip(src: Path, repeat: int, out: Path) -> float:
    listing = out.with_suffix(".txt")
    listing.write_text("".join(f"file '{src}'\n" for _ in range(repeat)))
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(listing),
                    "-ac", "1", "-ar", "16000", str(out)], check=True)
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(out)],
                           capture_output=True, text=True, check=True)
    return float(probe.stdout.strip())


def make_slideshow(out: Path, slide_s: float) -> float:
    sample = REPO.parent / "shared" / "corpus" / "sample"
    pics = ["example_image_01.png", "qr_bill_example.jpg", "webp-test.webp"]
    args = ["ffmpeg", "-v", "error", "-y"]
    for pic in pics * 2:
        args += ["-loop", "1", "-t", str(slide_s), "-framerate", "24", "-i", str(sample / pic)]
    n = len(pics) * 2
    chains = "".join(f"[{i}]scale=640:480,setsar=1{',negate' if i >= len(pics) else ''}[v{i}];" for i in range(n))
    args += ["-filter_complex", chains + "".join(f"[v{i}]" for i in range(n)) + f"concat=n={n}:v=1[v]",
             "-map", "[v]", "-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "veryfast", str(out)]
    subprocess.run(args, check=True)
    return n * slide_s


def bench_video(args, tmp: Path) -> dict:
    import torch
    from PIL import Image

    from mmrag.models.embedders import ImageEmbedder
    from mmrag.parsing.video_parser import FrameOptions

    video = tmp / "slides.mp4"
    seconds = make_slideshow(video, args.slide_s)
    emb = ImageEmbedder("ViT-B-32", "random")
    assert emb.enabled
    model, preprocess, _ = emb._bundle  # the same CLIP object for both paths
    blobs = BlobStore(tmp / "vblobs")

    def raw() -> int:
        out = Path(tempfile.mkdtemp(dir=tmp))
        subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-i", str(video), "-vf", "fps=0.2",
                        str(out / "f_%06d.png")], check=True)
        frames = sorted(out.glob("*.png"))
        with torch.inference_mode():
            for i in range(0, len(frames), emb.batch_size):
                batch = [preprocess(Image.open(p).convert("RGB")) for p in frames[i: i + emb.batch_size]]
                feats = model.encode_image(torch.stack(batch))
                feats / feats.norm(dim=-1, keepdim=True)
        return len(frames)

    def pipeline(opts: FrameOptions):
        def run() -> int:
            doc = parse_file(video, detect(video), blobs, file_key="b:slides.mp4", source="b", rel_path="slides.mp4",
                             content_hash="x", frames=opts)
            paths = [b.image_path for b in doc.blocks if b.kind.value == "image"]
            emb.embed_images(paths)
            return len(paths)
        return run

    paths = {"raw": raw, "rate only": pipeline(FrameOptions(0.2, 0.0, -1, False)),
             "default": pipeline(FrameOptions(0.2, 0.3, 4, False)), "default + OCR": pipeline(FrameOptions())}
    frames = {k: fn() for k, fn in paths.items()}  # warm-up, and the frame counts
    times: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(args.runs):
        for name, fn in paths.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    per_min = {k: statistics.median(v) * 60.0 / seconds for k, v in times.items()}
    return {"video_s": seconds, "frames_embedded": frames, "s_per_min_video": {k: round(v, 3) for k, v in per_min.items()},
            "rate_only_over_raw_speed": round(per_min["raw"] / per_min["rate only"], 3),
            "default_over_raw_speed": round(per_min["raw"] / per_min["default"], 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clip", default=str(REPO.parent / "shared" / "corpus" / "sample" / "jfk.flac"))
    ap.add_argument("--repeat", type=int, default=6)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--slide-s", type=float, default=10.0, help="seconds per slide of the video clip")
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
              "aim_pipeline_over_raw_ge_0_9": ratio >= 0.9, "video": bench_video(args, tmp)}
    v = result["video"]
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"clip: {duration:.1f} s of speech ({args.repeat}× {Path(args.clip).name}), faster-whisper tiny.en int8, "
          f"{args.runs} runs each (median)")
    print(f"  raw model   {med['raw']:6.2f} s   real-time factor {rtf['raw']:6.1f}×")
    print(f"  pipeline    {med['pipeline']:6.2f} s   real-time factor {rtf['pipeline']:6.1f}×")
    print(f"pipeline / raw speed: {ratio:.3f} (aim ≥ 0.9: {'PASS' if ratio >= 0.9 else 'FAIL'})")
    print(f"video: {v['video_s']:.0f} s slideshow (6 slides), CLIP ViT-B-32 (random weights), {args.runs} runs (median)")
    for k, t in v["s_per_min_video"].items():
        print(f"  {k:<14} {t:6.2f} s per minute of video   {v['frames_embedded'][k]:3d} frames embedded")
    print(f"pipeline (rate only) / raw speed: {v['rate_only_over_raw_speed']:.3f} "
          f"(aim ≥ 0.9: {'PASS' if v['rate_only_over_raw_speed'] >= 0.9 else 'FAIL'}); "
          f"default (scene keyframes + dedupe) / raw: {v['default_over_raw_speed']:.3f}")


if __name__ == "__main__":
    main()
