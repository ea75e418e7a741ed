"""Audio through the pipeline: timed transcripts with the offline default model, and their lineage."""

from __future__ import annotations

import re
import shutil
import subprocess
import wave

import pytest
from conftest import BAD, SAMPLE, copy_corpus
from helpers import TEXT, cli_json, rows_by_file

from mmrag.parsing.media import Segment, Transcriber, clamp_segments

PHRASE = "ask not what your country can do for you"


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def _in_order_share(needle: list[str], hay: list[str]) -> float:
    """Share of `needle` words found in `hay` in order (a subsequence match)."""
    i = 0
    for w in hay:
        if i < len(needle) and w == needle[i]:
            i += 1
    return i / len(needle)


@pytest.mark.slow
def test_jfk_transcribed_offline_and_found_with_its_time_range(mmrag_env, tmp_path, capsys):
    tr = Transcriber().transcribe(SAMPLE / "jfk.flac")
    text = " ".join(s.text for s in tr.segments)
    assert _in_order_share(_words(PHRASE), _words(text)) >= 0.8, text
    assert tr.language == "en" and 10 < tr.duration < 12.5
    assert all(0 <= s.start < s.end <= tr.duration + 0.5 for s in tr.segments)

    root = copy_corpus(SAMPLE, tmp_path / "media", ["jfk.flac", "sample_10s.mp3", "duck.md"])
    code, out = cli_json(capsys, "ingest", str(root), "--source", "media")
    assert code == 0 and out["indexed"] == 3
    code, res = cli_json(capsys, "query", "what your country can do for you")
    top = res["hits"][0]
    assert top["file"] == "jfk.flac" and top["modality"] == "transcript"
    assert 0 <= top["t_start"] < top["t_end"] <= 12


def test_silence_is_indexed_empty_with_a_note(mmrag_env, tmp_path, capsys):
    root = copy_corpus(BAD, tmp_path / "quiet", ["silent_1s.wav"])
    code, out = cli_json(capsys, "ingest", str(root), "--source", "quiet")
    assert code == 0 and out["indexed"] == 1 and out["failed"] == [] and out["skipped"] == []
    _, st = cli_json(capsys, "status")
    f = st["sources"]["quiet"]["files"][0]
    assert f["status"] == "indexed" and f["text_rows"] == 0 and "no speech detected" in f["reason"]


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng (Debian) makes the test speech")
def test_speech_at_a_known_offset_is_found_there(mmrag_env, tmp_path, capsys):
    speech = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(speech), "-s", "150",
                    "The quarterly report shows that the northern lakes froze early this year."], check=True)
    with wave.open(str(speech)) as w:
        rate, width, channels, frames = w.getframerate(), w.getsampwidth(), w.getnchannels(), w.readframes(w.getnframes())
    offset_s, total_s = 70.0, 100.0
    silence = b"\x00" * width * channels
    before, after = int(offset_s * rate), int(total_s * rate) - int(offset_s * rate) - len(frames) // (width * channels)
    root = tmp_path / "calls"
    root.mkdir()
    with wave.open(str(root / "long_call.wav"), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(silence * before + frames + silence * max(0, after))
    code, out = cli_json(capsys, "ingest", str(root), "--source", "calls")
    assert code == 0 and out["indexed"] == 1
    _, res = cli_json(capsys, "query", "northern lakes froze early")
    top = res["hits"][0]
    assert top["file"] == "long_call.wav"
    assert top["t_start"] - 1.0 <= offset_s <= top["t_end"] + 1.0, top
    assert rows_by_file(TEXT)


def _random_whisper():
    """openai-whisper's multilingual tiny architecture with random weights (skips without ffmpeg)."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg (Debian) is needed by openai-whisper")
    import torch
    from whisper.model import ModelDimensions, Whisper

    torch.manual_seed(0)
    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=1, n_audio_layer=1,
                           n_vocab=51865, n_text_ctx=448, n_text_state=64, n_text_head=1, n_text_layer=1)
    model = Whisper(dims).eval()
    with torch.no_grad():  # some parameters start uninitialised (torch.empty): give them small values
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model


def test_openai_whisper_backend_runs_with_random_weights(tmp_path):
    """The openai-whisper code path, offline: a random tiny model built from ModelDimensions."""
    model = _random_whisper()
    tr = Transcriber("openai-whisper", "random-tiny", model_obj=model).transcribe(SAMPLE / "jfk.flac")
    assert tr.model == "openai-whisper random-tiny"
    assert all(s.start <= s.end for s in tr.segments)  # quality is not asserted: the weights are random


@pytest.mark.slow
def test_video_frames_at_the_configured_rate_with_transcript_and_times(mmrag_env, tmp_path, capsys, monkeypatch):
    from mmrag.config import Settings

    monkeypatch.setenv("MMRAG_VIDEO_FPS", "0.5")  # one frame every 2 s
    monkeypatch.setenv("MMRAG_FRAME_DEDUPE_DISTANCE", "-1")  # keep near-duplicates: count every sample
    root = copy_corpus(SAMPLE, tmp_path / "video", ["sample_10s_video.mp4"])
    code, out = cli_json(capsys, "ingest", str(root), "--source", "video")
    assert code == 0 and out["indexed"] == 1
    from helpers import store

    rows = store().client.query("mmrag_image", filter="", output_fields=["t_start", "t_end", "image_path"], limit=100)
    times = sorted(r["t_start"] for r in rows)
    assert len(times) == 5  # 10 s at 0.5 fps
    for i, t in enumerate(times):
        assert abs(t - i * 2.0) <= 0.5
    text = store().client.query("mmrag_text", filter='modality == "transcript"', output_fields=["t_start", "t_end"],
                                limit=100)
    assert text and all(0 <= r["t_start"] <= r["t_end"] <= 10.5 for r in text)
    assert Settings.from_env().video_fps == 0.5


def test_segment_times_are_cut_to_the_audio_length():
    """Whisper can time the last segment past the end of the audio (seen: 10.72 s in a 9.99 s clip,
    in some runs): the transcript's times stay within the audio."""
    segs = [Segment(0.72, 4.0, "a"), Segment(4.0, 10.72, "b"), Segment(10.5, 11.0, "c"), Segment(-0.1, 0.5, "d")]
    assert clamp_segments(segs, 9.993) == [Segment(0.72, 4.0, "a"), Segment(4.0, 9.993, "b"),
                                           Segment(9.993, 9.993, "c"), Segment(0.0, 0.5, "d")]
    assert clamp_segments(segs, 0.0) == segs  # length unknown: as the model gave them


@pytest.mark.slow
def test_bad_media_outcomes(mmrag_env, tmp_path, capsys):
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg (Debian) is needed")
    root = copy_corpus(BAD, tmp_path / "bad", ["truncated_video.mp4"])
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(SAMPLE / "jfk.flac"), "-c:a", "aac", str(root / "audio_only.mp4")],
                   check=True)
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(SAMPLE / "sample_10s_video.mp4"), "-an", "-c:v", "copy",
                    str(root / "no_audio.mp4")], check=True)
    code, out = cli_json(capsys, "ingest", str(root), "--source", "bad")
    assert code == 1  # the truncated video failed; the others were indexed
    assert [f["path"] for f in out["failed"]] == ["truncated_video.mp4"]
    assert "ffmpeg cannot read the file" in out["failed"][0]["error"]
    _, st = cli_json(capsys, "status")
    files = {f["path"]: f for f in st["sources"]["bad"]["files"]}
    assert files["audio_only.mp4"]["status"] == "indexed" and "audio only" in files["audio_only.mp4"]["reason"]
    assert files["audio_only.mp4"]["text_rows"] >= 1
    assert files["no_audio.mp4"]["status"] == "indexed" and "no audio track" in files["no_audio.mp4"]["reason"]
    assert files["no_audio.mp4"]["image_rows"] >= 1


def _slideshow(tmp_path, seconds: int = 3):
    """A video of two different pictures, `seconds` each: one scene cut at `seconds`."""
    out = tmp_path / "slides.mp4"
    args = ["ffmpeg", "-v", "error", "-y"]
    for img in ("example_image_01.png", "qr_bill_example.jpg"):
        args += ["-loop", "1", "-t", str(seconds), "-framerate", "10", "-i", str(SAMPLE / img)]
    args += ["-filter_complex", "[0]scale=320:240,setsar=1[a];[1]scale=320:240,setsar=1[b];[a][b]concat=n=2:v=1[v]",
             "-map", "[v]", "-pix_fmt", "yuv420p", str(out)]
    subprocess.run(args, check=True)
    return out


def test_scene_change_keyframes_and_near_duplicate_frames_dropped(tmp_path):
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg (Debian) is needed")
    from mmrag.parsing.media import drop_near_duplicates, extract_frames

    video = _slideshow(tmp_path)
    frames = extract_frames(video, 0.2, tmp_path / "frames", scene_threshold=0.3)
    got = [(round(f.t), f.reason) for f in frames]
    assert got == [(0, "sampled"), (3, "scene"), (5, "sampled")]  # the cut between two 5 s samples
    kept, dropped = drop_near_duplicates(frames, 4)
    assert [round(f.t) for f in kept] == [0, 3] and dropped == 1  # 5 s shows the same picture as 3 s
    assert [round(f.t) for f in extract_frames(video, 0.2, tmp_path / "f2", scene_threshold=0)] == [0, 5]
    assert drop_near_duplicates(frames, -1) == (frames, 0)


def _texts(file_key: str) -> list[str]:
    from helpers import store

    return [r["text"] for r in store().client.query("mmrag_text", filter=f'file_key == "{file_key}"',
                                                    output_fields=["text"], limit=100)]


def _srt(path, cues):
    path.write_text("\n".join(f"{i + 1}\n00:00:{a:02d},000 --> 00:00:{b:02d},000\n{text}\n"
                              for i, (a, b, text) in enumerate(cues)), encoding="utf-8")


@pytest.mark.slow
def test_sidecar_subtitles_are_the_transcript_and_follow_their_video(mmrag_env, tmp_path, capsys):
    """A sidecar .srt stands in for Whisper; editing it re-indexes the video; without the video it is
    indexed on its own."""
    root = copy_corpus(SAMPLE, tmp_path / "sub", ["sample_10s_video.mp4"])
    _srt(root / "sample_10s_video.en.srt", [(1, 3, "A heron wades through the reeds"), (4, 7, "Kingfishers dive for minnows")])
    code, out = cli_json(capsys, "ingest", str(root), "--source", "sub")
    assert code == 0 and out["indexed"] == 1
    assert [s["path"] for s in out["skipped"]] == ["sample_10s_video.en.srt"]
    assert "sidecar subtitles of sample_10s_video.mp4" in out["skipped"][0]["reason"]
    code, q = cli_json(capsys, "query", "kingfishers diving for minnows")
    top = [h for h in q["hits"] if h["modality"] == "transcript"][0]
    assert top["file"] == "sample_10s_video.mp4" and top["t_start"] <= 4 <= top["t_end"]
    assert top["parser"] == "ffmpeg+whisper ffmpeg + subtitles"  # parser, then its version: no Whisper ran
    _, st = cli_json(capsys, "status")
    video = {f["path"]: f for f in st["sources"]["sub"]["files"]}["sample_10s_video.mp4"]
    assert "sidecar subtitles" in video["reason"]

    _srt(root / "sample_10s_video.en.srt", [(2, 5, "Otters slide down the muddy bank")])  # edit the sidecar only
    code, out = cli_json(capsys, "ingest", str(root), "--source", "sub")
    assert code == 0 and out["indexed"] == 1  # the video was redone
    texts = " ".join(_texts("sub:sample_10s_video.mp4"))
    assert "Otters" in texts and "Kingfishers" not in texts

    (root / "sample_10s_video.mp4").unlink()  # the subtitles are on their own now
    code, out = cli_json(capsys, "ingest", str(root), "--source", "sub")
    assert code == 0 and out["deleted"] == 1
    assert "sub:sample_10s_video.mp4" not in rows_by_file(TEXT)
    assert "Otters" in " ".join(_texts("sub:sample_10s_video.en.srt"))


def test_embedded_subtitle_track_is_the_transcript(tmp_path):
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg (Debian) is needed")
    from mmrag.parsing import parse_file
    from mmrag.parsing.video_parser import FrameOptions
    from mmrag.sources.blobs import BlobStore
    from mmrag.sources.filetypes import detect

    _srt(tmp_path / "t.srt", [(1, 4, "Embedded words about grebes")])
    video = tmp_path / "with_subs.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(SAMPLE / "sample_10s_video.mp4"), "-i", str(tmp_path / "t.srt"),
                    "-map", "0", "-map", "1", "-c:v", "copy", "-c:a", "copy", "-c:s", "mov_text",
                    "-metadata:s:s:0", "language=eng", str(video)], check=True)

    class NoWhisper(Transcriber):
        def transcribe(self, path):
            raise AssertionError("Whisper must not run when the file has subtitles")

    doc = parse_file(video, detect(video), BlobStore(tmp_path / "blobs"), file_key="t:with_subs.mp4", source="t",
                     rel_path="with_subs.mp4", content_hash="h", transcriber=NoWhisper(), frames=FrameOptions(ocr=False))
    speech = [b for b in doc.blocks if b.kind.value == "transcript"]
    assert [(b.text, b.t_start, b.t_end, b.meta["language"]) for b in speech] == [("Embedded words about grebes", 1.0, 4.0, "eng")]
    assert doc.parser_version == "ffmpeg + subtitles" and any("embedded subtitle track" in w for w in doc.warnings)
    assert [b for b in doc.blocks if b.kind.value == "image"]


@pytest.mark.slow
def test_language_detection_with_a_multilingual_model(tmp_path):
    """openai-whisper's multilingual tiny architecture (random weights) detects a language when none
    is set, and keeps a forced one."""
    from whisper.tokenizer import LANGUAGES

    model = _random_whisper()
    detected = Transcriber("openai-whisper", "random-tiny", model_obj=model).transcribe(SAMPLE / "jfk.flac")
    assert detected.language in LANGUAGES
    forced = Transcriber("openai-whisper", "random-tiny", model_obj=model, language="de").transcribe(SAMPLE / "jfk.flac")
    assert forced.language == "de"
