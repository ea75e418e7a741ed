"""End to end on the real sample corpus: Dagster runs, Milvus Lite, LightRAG on disk, Docling."""

from __future__ import annotations

import pytest
from conftest import BAD, SAMPLE, copy_corpus, isolated_env, run_cli
from helpers import IMAGE, TEXT, cli_json, rows_by_file

pytestmark = pytest.mark.slow  # the fast loop: pytest -m "not slow"


@pytest.fixture(scope="module")
def indexed_sample(tmp_path_factory):
    """The whole sample corpus ingested once for the tests of this module."""
    tmp = tmp_path_factory.mktemp("sample")
    with isolated_env(tmp):
        root = copy_corpus(SAMPLE, tmp / "sample")
        code, out = run_cli("ingest", str(root), "--source", "sample")
        yield code, out, root


def test_every_document_and_image_is_indexed(indexed_sample):
    code, out, root = indexed_sample
    assert code == 0, out["failed"]
    assert out["skipped"] == []  # audio, video and the standalone .vtt (no media beside it) included
    docs = {p.name for p in root.iterdir()}
    assert out["indexed"] == len(docs) == out["files"]
    text_files = {k.split(":", 1)[1] for k in rows_by_file(TEXT)}
    assert text_files == docs
    # Image rows: standalone images and pictures inside DOCX/PPTX/XLSX/PDF (random CLIP weights here).
    image_files = {k.split(":", 1)[1] for k in rows_by_file(IMAGE)}
    assert {"example_image_01.png", "webp-test.webp", "qr_bill_example.jpg", "docx_grouped_images.docx",
            "picture_classification.pdf", "sample_10s_video.mp4"} <= image_files
    assert out["image_rows"] == sum(len(v) for v in rows_by_file(IMAGE).values())
    assert out["graph_nodes"] > 50 and out["graph_edges"] > 50


def _query(capsys, text, k=5):
    code, out = cli_json(capsys, "query", text, "--top-k", str(k))
    assert code == 0
    return [h for h in out["hits"] if h["modality"] != "image"]


def test_wiki_sentence_ranks_its_page_first(indexed_sample, capsys):
    hits = _query(capsys, "The duck is the common name for numerous species of waterfowl in the family Anatidae")
    assert hits[0]["file"] == "wiki_duck.html"
    assert hits[0]["source"] == "sample" and hits[0]["parser"].startswith("docling")


@pytest.mark.parametrize("question,file,needle", [
    ("Merged Cell 1.1 2.1", "word_tables.docx", "Merged Cell 1.1 2.1"),
    ("col-1 col-2 col-3 col-4", "xlsx_01.xlsx", "col-4"),
])
def test_table_text_is_retrievable(indexed_sample, capsys, question, file, needle):
    hits = _query(capsys, question, k=6)
    assert hits[0]["file"] == file, [h["file"] for h in hits]
    assert hits[0]["modality"] == "table"
    assert any(h["file"] == file and needle in h["text"] for h in hits)


def test_bad_files_next_to_good_ones(mmrag_env, tmp_path, capsys):
    root = copy_corpus(SAMPLE, tmp_path / "mixed", ["duck.md", "word_tables.docx"])
    code, first = cli_json(capsys, "ingest", str(root), "--source", "mixed")
    assert code == 0 and first["indexed"] == 2
    before = rows_by_file(TEXT)
    copy_corpus(BAD, root)
    code, out = cli_json(capsys, "ingest", str(root), "--source", "mixed")
    failed = {f["path"]: f["error"] for f in out["failed"]}
    skipped = {s["path"]: s["reason"] for s in out["skipped"]}
    assert code == 1  # some files failed, and the exit code says so
    assert set(failed) == {"password_protected.pdf", "truncated.pdf", "truncated_video.mp4"}
    assert "password" in failed["password_protected.pdf"]
    assert {"empty.pdf", "random_bytes.pdf"} <= set(skipped)
    assert "silent_1s.wav" not in failed and "silent_1s.wav" not in skipped  # silence is indexed, empty
    after = rows_by_file(TEXT)
    for key, ids in before.items():
        assert after[key] == ids  # rows that existed before are untouched
    # Every readable bad file is indexed with what could be read.
    assert {"mixed:invalid_utf8.md", "mixed:looks_like_text.txt", "mixed:malformed_pictures.pptx"} <= set(after)


def test_standalone_subtitles_are_a_timed_transcript(indexed_sample, capsys):
    hits = _query(capsys, "Neil deGrasse Tyson, director of the Hayden Planetarium")
    assert hits[0]["file"] == "webvtt_example_01.vtt"
    assert hits[0]["t_start"] <= 20 <= hits[0]["t_end"]  # the cue at 00:20 names him
