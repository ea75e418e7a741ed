"""Parsers on real files: the sample corpus, the bad corpus, and no network access while parsing."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from conftest import BAD, SAMPLE

from mmrag.blocks import BlockKind
from mmrag.index.chunking import chunk_document
from mmrag.parsing import ParseError, SkipFile, parse_file
from mmrag.sources.blobs import BlobStore
from mmrag.sources.filetypes import detect


def _parse(path: Path, tmp_path):
    return parse_file(path, detect(path), BlobStore(tmp_path / "blobs"), file_key=f"t:{path.name}", source="t",
                      rel_path=path.name, content_hash="h")


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test if anything opens a non-loopback connection."""
    attempts = []
    real = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else str(address)
        if host not in ("127.0.0.1", "::1", "localhost"):
            attempts.append(address)
            raise OSError(f"test forbids network access to {address}")
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    return attempts


def test_html_with_remote_images_is_parsed_without_fetching(tmp_path, no_network):
    doc = _parse(SAMPLE / "wiki_duck.html", tmp_path)
    assert no_network == []
    images = [b for b in doc.blocks if b.kind == BlockKind.IMAGE]
    assert images and all(b.image_path is None and b.image_missing for b in images)
    assert any(b.kind == BlockKind.TABLE for b in doc.blocks)
    assert sum(len(b.text) for b in doc.blocks) > 20000


@pytest.mark.parametrize("name,kinds", [
    ("word_tables.docx", {BlockKind.TABLE}),
    ("xlsx_01.xlsx", {BlockKind.TABLE}),
    ("equations.docx", {BlockKind.EQUATION}),
    ("docx_grouped_images.docx", {BlockKind.IMAGE}),
    ("picture_classification.pdf", {BlockKind.TEXT, BlockKind.IMAGE}),
    ("example_image_01.png", {BlockKind.IMAGE, BlockKind.TEXT}),
])
def test_sample_files_yield_their_block_kinds(tmp_path, name, kinds):
    doc = _parse(SAMPLE / name, tmp_path)
    assert kinds <= {b.kind for b in doc.blocks}
    assert doc.parser and doc.parser_version
    for b in doc.blocks:
        if b.image_path:
            assert Path(b.image_path).is_file() and Path(b.image_path).is_relative_to(tmp_path / "blobs")
    content = doc.to_content_list()
    assert len(content) == len(doc.blocks) and {c["type"] for c in content} <= {"text", "image", "table", "equation"}


def test_pdf_keeps_pages_and_bboxes(tmp_path):
    doc = _parse(SAMPLE / "multi_page.pdf", tmp_path)
    pages = {b.page for b in doc.blocks}
    assert pages == set(range(doc.pages)) and doc.pages == 5
    assert all(b.bbox and b.bbox[0] < b.bbox[2] and b.bbox[1] < b.bbox[3] for b in doc.blocks)
    assert "word processor" in " ".join(b.text for b in doc.blocks).lower()


EXPECTED_BAD = {
    "empty.pdf": (SkipFile, "empty"),
    "random_bytes.pdf": (SkipFile, "not a PDF"),
    "password_protected.pdf": (ParseError, "password"),
    "truncated.pdf": (ParseError, "not a readable PDF"),
    "truncated_video.mp4": (ParseError, "ffmpeg cannot read the file"),
}


def test_bad_files_get_a_clear_outcome(tmp_path):
    for f in sorted(BAD.iterdir()):
        try:
            doc = _parse(f, tmp_path)
        except (SkipFile, ParseError) as e:
            exp = EXPECTED_BAD.get(f.name)
            assert exp, f"{f.name} unexpectedly refused: {e}"
            assert isinstance(e, exp[0]) and exp[1] in str(e), (f.name, e)
            continue
        assert f.name not in EXPECTED_BAD, f"{f.name} should not parse"
        # The rest parse with what is readable, and say what they had to work around.
        if f.name == "silent_1s.wav":  # silence: indexed with an empty transcript and a note
            assert not doc.blocks and "no speech" in doc.warnings[0]
            continue
        assert doc.blocks
        if f.name in ("invalid_utf8.md", "looks_like_text.txt", "malformed_pictures.pptx"):
            assert doc.warnings, f.name


def test_chunks_keep_lineage_and_respect_size(tmp_path):
    doc = _parse(SAMPLE / "wiki_duck.html", tmp_path)
    chunks = chunk_document(doc, size=120, overlap=20)
    from mmrag.models.tokenizer import TOKENIZER

    assert all(TOKENIZER.count(c.text) <= 120 + 40 for c in chunks)  # + the heading line
    ids = {b.id for b in doc.blocks}
    assert all(set(c.block_ids) <= ids for c in chunks)
    tables = [c for c in chunks if c.modality == "table"]
    assert tables and all(len(c.block_ids) == 1 for c in tables)


def test_table_rows_keep_their_column_names(tmp_path):
    """Each row of a table is a line of "column: value" pairs under the table's heading path, as many
    rows as fit a chunk, so a row is found by the column names (docling's DOCX table, real file)."""
    from mmrag.index.chunking import row_text, table_rows
    from mmrag.models.tokenizer import TOKENIZER

    doc = _parse(SAMPLE / "word_sample.docx", tmp_path)
    (table,) = [c for c in chunk_document(doc) if c.modality == "table"]
    assert table.text.splitlines() == [
        "Swimming in the lake > Let’s swim! > Let’s eat", "Table:",
        "Leaves; Food: Ash, Elm, Maple; Calories per portion: 50",
        "Berries; Food: Blueberry, Strawberry, Cranberry; Calories per portion: 150",
        "Grain; Food: Corn, Buckwheat, Barley; Calories per portion: 200"]
    # A long table: every window repeats the heading and caption, every row carries its columns.
    md = "| Year | Revenue (USD m) |\n|---|---|\n" + "".join(f"| {1900 + i} | {i * 7} |\n" for i in range(120))
    from mmrag.blocks import Block

    doc.blocks = [Block(id="b0", kind=BlockKind.TABLE, order=0, text=md, caption="Table 4: revenue by year", section="Results")]
    chunks = chunk_document(doc, size=60, overlap=10)
    assert len(chunks) > 3 and all(TOKENIZER.count(c.text) <= 60 for c in chunks)
    assert all(c.text.startswith("Results\nTable 4: revenue by year\n") for c in chunks)
    rows = [ln for c in chunks for ln in c.text.splitlines()[2:]]
    assert rows == [f"Year: {1900 + i}; Revenue (USD m): {i * 7}" for i in range(120)]
    # merged cells, a title row over every column, links and comments
    assert row_text(["H0", "H1", "H1"], ["a", "M", "M"]) == "H0: a; H1: M"
    assert row_text(["first", "second", "third"], ["3", "3", "3"]) == "first: 3; second: 3; third: 3"
    cols, rows, title = table_rows("| Duck | Duck |\n|---|---|\n| Kingdom: | [Animalia](/wiki/Animal) <!-- image --> |")
    assert title == "Duck" and row_text(cols, rows[0]) == "Kingdom: Animalia"
    assert table_rows("no | table here") is None and table_rows("| a | b |\n|---|---|") is None


@pytest.mark.skipif(os.environ.get("MMRAG_TEST_MINERU") != "1",
                    reason="opt-in (MMRAG_TEST_MINERU=1): MinerU's server probes its vendor's cloud API when it starts")
def test_mineru_parser_by_config(tmp_path):
    """MinerU (flash tier, offline) through its local server, started by the parser if needed."""
    import subprocess
    import sys

    exe = Path(sys.executable).parent / "mineru"
    if not exe.exists():
        pytest.skip("mineru is not installed")
    was_running = "not running" not in subprocess.run([str(exe), "server", "status"], capture_output=True,
                                                      text=True, timeout=60).stdout.lower()
    try:
        src = tmp_path / "multi_page.pdf"
        src.write_bytes((SAMPLE / "multi_page.pdf").read_bytes())
        doc = parse_file(src, detect(src), BlobStore(tmp_path / "blobs"), file_key="t:m.pdf", source="t",
                         rel_path="m.pdf", content_hash="h", pdf_parser="mineru")
        assert doc.parser == "mineru" and doc.parser_version[0].isdigit()
        assert any(b.kind == BlockKind.TITLE for b in doc.blocks)  # MinerU recovers headings; pypdfium2 does not
        assert "word processor" in " ".join(b.text for b in doc.blocks).lower()
    finally:
        if not was_running:
            subprocess.run([str(exe), "server", "stop"], capture_output=True, timeout=60)
