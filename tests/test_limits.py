"""Per-file parsing limits: pathological inputs fail fast with their limit, next to good files that are
indexed, in real `mmrag ingest` runs (Docling, pypdfium2, Tesseract, the supervised parse worker)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from corpus_gen import build_pathological, make_pdf, make_png, make_zip_bomb_docx
from PIL import Image
from helpers import TEXT, cli_json, rows_by_file, store

from mmrag.config import Settings
from mmrag.parsing import ParseError, SkipFile, parse_file
from mmrag.parsing.limits import LimitExceeded, Limits, markup_depth, precheck
from mmrag.parsing.worker import ParseSupervisor, WorkerConfig, tree_rss
from mmrag.sources.blobs import BlobStore
from mmrag.sources.filetypes import detect

REPO = Path(__file__).resolve().parents[1]


def _ingest(capsys, root: Path) -> tuple[int, dict, float]:
    t0 = time.monotonic()
    code, out = cli_json(capsys, "ingest", str(root), "--source", "lim")
    return code, out, time.monotonic() - t0


def _texts(file: str) -> str:
    st = store()
    rows = st.client.query(st._loaded(TEXT), filter=f'file_key == "lim:{file}"', output_fields=["text"], limit=1000)
    return " ".join(r["text"] for r in rows)


# -- pathological inputs next to good ones, one ingest --------------------------------------------


@pytest.mark.slow
def test_pathological_inputs_fail_fast_next_to_good_files(mmrag_env, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MMRAG_MAX_PAGES", "20")
    monkeypatch.setenv("MMRAG_PDF_PARSER", "pypdfium2")
    root = build_pathological(tmp_path / "folder")
    (root / "good.md").write_text("# Teal\n\nTeal are small dabbling ducks that feed in shallow marshes.\n")
    (root / "good.html").write_text("<html><body><h1>Eiders</h1><p>Eiders are large sea ducks of the north."
                                    "</p></body></html>")
    make_pdf(root / "short.pdf", 3)

    code, out, wall = _ingest(capsys, root)

    failed = {f["path"]: f["error"] for f in out["failed"]}
    assert set(failed) == {"deep.html", "bomb.docx", "pages.pdf", "huge.png"}, out
    assert "MMRAG_MAX_NESTING" in failed["deep.html"] and "256 levels" in failed["deep.html"]
    assert "decompression bomb" in failed["bomb.docx"] and "MMRAG_MAX_ZIP_RATIO" in failed["bomb.docx"]
    assert failed["pages.pdf"] == "PDF has 50 pages (limit 20, MMRAG_MAX_PAGES)"
    assert "100000 x 100000" in failed["huge.png"] and "MMRAG_MAX_IMAGE_PIXELS" in failed["huge.png"]
    assert code == 1 and out["skipped"] == []
    assert out["indexed"] == 4
    indexed = {k.split(":", 1)[1] for k in rows_by_file(TEXT)}
    assert indexed == {"nul.md", "good.md", "good.html", "short.pdf"}
    # NUL bytes are removed (not turned into word breaks), the words they split are whole again.
    assert "dabble at the surface" in _texts("nul.md") and "\x00" not in _texts("nul.md")
    # Each bad file failed in its pre-check (milliseconds), not after minutes in a parser: the run
    # costs what the four good files and the models' loading cost.
    assert wall < 150, wall
    # They failed for their content: the next sync does not parse them again (no run at all).
    from dagster import DagsterInstance

    runs = len(DagsterInstance.get().get_runs())
    code, again, _ = _ingest(capsys, root)
    assert len(DagsterInstance.get().get_runs()) == runs and {f["path"] for f in again["failed"]} == set(failed)


# -- the wall-clock limit and the memory ceiling, in real runs ------------------------------------


@pytest.mark.slow
def test_a_slow_file_is_stopped_and_the_next_file_is_indexed(mmrag_env, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MMRAG_PARSE_TIMEOUT_S", "1")
    monkeypatch.setenv("MMRAG_PDF_PARSER", "pypdfium2")
    root = tmp_path / "folder"
    root.mkdir()
    make_pdf(root / "a_slow.pdf", 4000)  # about 2 ms a page with pypdfium2: seconds, legitimately
    (root / "b_after.md").write_text("# Pintail\n\nThe northern pintail is a duck with wide geographic distribution.\n")

    code, out, wall = _ingest(capsys, root)

    assert out["failed"] == [{"path": "a_slow.pdf", "error": "parsing stopped after 1 s (MMRAG_PARSE_TIMEOUT_S)"}]
    assert code == 1 and out["indexed"] == 1
    assert set(rows_by_file(TEXT)) == {"lim:b_after.md"}  # parsed by a fresh worker after the kill
    assert wall < 150, wall


@pytest.mark.slow
def test_a_file_over_the_memory_ceiling_is_stopped(mmrag_env, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MMRAG_PARSE_MEMORY_MB", "1536")
    monkeypatch.setenv("MMRAG_MAX_IMAGE_PIXELS", str(10**9))  # past the pre-check: the ceiling must act
    root = tmp_path / "folder"
    root.mkdir()
    make_png(root / "a_big.png", 25_000, 25_000)  # 400 KB on disk, 625 MB greyscale, 1.9 GB as RGB
    (root / "b_after.md").write_text("# Scaup\n\nThe greater scaup is a mid-sized diving duck.\n")

    code, out, _ = _ingest(capsys, root)

    assert out["failed"] == [{"path": "a_big.png", "error": "parser used more than 1536 MB (MMRAG_PARSE_MEMORY_MB)"}]
    assert code == 1 and out["indexed"] == 1
    assert set(rows_by_file(TEXT)) == {"lim:b_after.md"}


# -- the worker itself ----------------------------------------------------------------------------


def _sup(tmp_path, reuse: bool = True, blobs: str = "blobs", **kw) -> ParseSupervisor:
    s = Settings.from_env().with_(pdf_parser="pypdfium2", **kw)
    return ParseSupervisor(WorkerConfig.from_settings(s, tmp_path / blobs), reuse=reuse)


def _parse(sup, path: Path):
    return sup.parse(path, detect(path), file_key=f"t:{path.name}", source="t", rel_path=path.name,
                     content_hash="h", sidecars=[])


def test_a_worker_that_dies_fails_its_file_and_is_replaced(mmrag_env, tmp_path):
    slow = make_pdf(tmp_path / "slow.pdf", 4000)
    md = tmp_path / "ok.md"
    md.write_text("# Wigeon\n\nWigeons graze on land more than most dabbling ducks.\n")
    with _sup(tmp_path) as sup:
        assert _parse(sup, md).blocks
        first = sup.pid
        threading.Timer(0.5, os.kill, (first, signal.SIGSEGV)).start()  # as a crash in native code would
        with pytest.raises(ParseError, match=r"^parser process died \(signal 11\)$"):
            _parse(sup, slow)
        assert "Wigeons graze" in _parse(sup, md).blocks[-1].text
        assert sup.pid != first and sup.restarts == 1
    assert sup.pid is None


def test_closing_the_supervisor_does_not_wait_for_the_worker_to_exit(mmrag_env, tmp_path):
    """The run goes on while the worker shuts its interpreter down; the worker still goes away."""
    md = tmp_path / "ok.md"
    md.write_text("# Teal\n\nTeals are small dabbling ducks.\n")
    sup = _sup(tmp_path, reuse=False)
    assert _parse(sup, md).blocks
    pid = sup.pid
    t0 = time.monotonic()
    sup.close()
    assert time.monotonic() - t0 < 0.5 and sup.pid is None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    assert not _alive(pid)


def test_a_spare_worker_started_ahead_is_adopted_by_the_run_or_stopped(mmrag_env, tmp_path):
    """`mmrag ingest` starts the parse worker before the run (it loads Docling while Dagster sets the
    run up): the run's supervisor of the same config adopts that process; a supervisor of another
    config stops it and starts its own; one nobody adopted is stopped by `discard_spare`."""
    from mmrag.parsing import worker

    md = tmp_path / "ok.md"
    md.write_text("# Garganey\n\nGarganeys are small dabbling ducks.\n")
    config = WorkerConfig.from_settings(Settings.from_env().with_(pdf_parser="pypdfium2"), tmp_path / "blobs")
    worker.start_spare(config, ["markdown", "docx"])
    spare = worker._spare["proc"].pid
    with ParseSupervisor(config) as sup:
        assert "Garganeys" in _parse(sup, md).blocks[-1].text
        assert sup.pid == spare and not worker._spare  # adopted: no second worker was started

    worker.start_spare(config, ["markdown"])
    spare = worker._spare["proc"].pid
    other = WorkerConfig.from_settings(Settings.from_env().with_(pdf_parser="auto"), tmp_path / "blobs")
    with ParseSupervisor(other) as sup:
        assert _parse(sup, md).blocks and sup.pid != spare
    assert not _alive(spare)

    worker.start_spare(config, [])
    spare = worker._spare["proc"].pid
    worker.discard_spare()
    assert not worker._spare and not _alive(spare)


def test_a_worker_serves_the_next_run_of_its_process_then_goes_away(mmrag_env, tmp_path, monkeypatch):
    """A run's worker waits for the next run of the same process and parse settings, whatever its data
    dir (each file's pictures go to its own run's blob store), and is stopped after IDLE_S unused."""
    from mmrag.parsing import worker

    monkeypatch.setattr(worker, "IDLE_S", 2.0)
    worker.discard_idle()
    png = tmp_path / "tally.png"
    Image.new("RGB", (64, 32), "white").save(png)
    with _sup(tmp_path, blobs="blobs-a") as sup:
        assert _parse(sup, png).blocks
        first = sup.pid
    assert _alive(first)  # kept for the next run
    with _sup(tmp_path, blobs="blobs-b") as sup:
        doc = _parse(sup, png)
        assert sup.pid == first  # adopted: no second worker started
    stored = [b.image_path for b in doc.blocks if getattr(b, "image_path", None)]
    assert stored and all(str(tmp_path / "blobs-b") in str(p) for p in stored), stored
    with _sup(tmp_path, blobs="blobs-b", parse_timeout_s=7) as sup:  # other limits: a worker of its own
        assert _parse(sup, png).blocks and sup.pid != first
        third = sup.pid
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(first):
        time.sleep(0.1)
    assert not _alive(first)  # one worker kept per process: the other made room; this one expires
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _alive(third):
        time.sleep(0.1)
    assert not _alive(third) and not worker._idle


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def test_parser_errors_come_back_as_before(mmrag_env, tmp_path):
    """SkipFile and ParseError cross the process boundary with their class and message."""
    from mmrag.index.stages import FileOutcome, RawFile, parse_stage

    empty = tmp_path / "empty.pdf"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.pdf"
    truncated.write_bytes(make_pdf(tmp_path / "whole.pdf", 30).read_bytes()[:3000])
    blobs = BlobStore(tmp_path / "blobs")
    with _sup(tmp_path) as sup:
        for f in (empty, truncated):
            raw = RawFile(f"t:{f.name}", "t", str(tmp_path), f.name, str(f), "h", f.stat().st_size, 0.0, detect(f))
            in_process = parse_stage(raw, lambda p, d, **ident: parse_file(p, d, blobs, pdf_parser="pypdfium2", **ident))
            supervised = parse_stage(raw, sup.parse)
            assert isinstance(supervised, FileOutcome) and supervised == in_process
        assert sup.restarts == 0
        with pytest.raises(SkipFile, match="^empty file$"):
            _parse(sup, empty)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and PR_SET_PDEATHSIG")
def test_a_killed_ingest_leaves_no_parse_worker_behind(mmrag_env, tmp_path):
    """SIGKILL of the parent while the worker runs Tesseract: the worker and its children go too."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (2400, 3200), 255)
    draw = ImageDraw.Draw(img)
    for y in range(10, 3180, 16):
        draw.text((10, y), "mallard teal pintail wigeon gadwall shoveler " * 6, fill=0)
    img.save(tmp_path / "text.png")  # Tesseract reads it for tens of seconds
    pid_file = tmp_path / "worker.pid"
    script = textwrap.dedent(f"""
        from pathlib import Path
        from mmrag.config import Settings
        from mmrag.sources.filetypes import detect
        from mmrag.parsing.worker import ParseSupervisor, WorkerConfig
        if __name__ == "__main__":
            f = Path({str(tmp_path / "text.png")!r})
            sup = ParseSupervisor(WorkerConfig.from_settings(Settings.from_env(), {str(tmp_path / "blobs")!r}))
            sup._start()
            Path({str(pid_file)!r}).write_text(str(sup.pid))
            sup.parse(f, detect(f), file_key="t:x", source="t", rel_path=f.name, content_hash="h", sidecars=[])
    """)
    (tmp_path / "parent.py").write_text(script)
    parent = subprocess.Popen([sys.executable, str(tmp_path / "parent.py")], cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while not (pid_file.exists() and pid_file.read_text().strip()):
            assert time.monotonic() < deadline and parent.poll() is None
            time.sleep(0.05)
        worker = int(pid_file.read_text())
        children: list[int] = []
        while not children:  # wait until the worker runs tesseract
            assert time.monotonic() < deadline and parent.poll() is None
            children = _children(worker)
            time.sleep(0.05)
        assert _running(worker) and all(_running(c) for c in children)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while (_running(worker) or any(_running(c) for c in children)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(worker), "the parse worker outlived its killed parent"
    assert not any(_running(c) for c in children), "the worker's children outlived it"


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            out += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
    except OSError:
        pass
    return out


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for init to reap it: it runs nothing)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_tree_rss_counts_the_children(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; b = bytearray(300 * 2**20); time.sleep(30)"])
    try:
        time.sleep(1.5)
        assert tree_rss(os.getpid()) >= tree_rss(child.pid) > 250 * 2**20
    finally:
        child.kill()
        child.wait()
    assert tree_rss(child.pid) == 0


# -- the pre-checks and NUL bytes, without a run --------------------------------------------------


def test_prechecks_pass_real_documents():
    from conftest import SAMPLE

    sample = REPO / "tests" / "corpus" / "sample"
    sample = sample if sample.is_dir() else SAMPLE
    if not sample.is_dir():
        pytest.skip(f"no sample corpus at {sample}")
    limits = Limits()
    for f in sorted(sample.iterdir()):
        precheck(f, detect(f).kind, limits)  # none of them is near a limit
    assert markup_depth((sample / "wiki_duck.html").read_bytes()) < 40


@pytest.mark.parametrize("markup,markdown,deep", [
    ("<ul>" + "<li>item" * 3000 + "</ul>", False, False),  # siblings: optional end tags
    ("<p>para" * 5000, False, False),
    ("<table>" + "<tr><td>a<td>b" * 500 + "</table>", False, False),
    ("<div/>x" * 2000, False, False),
    ("<script>" + "<div>" * 1000 + "</script>", False, False),
    ("<!--" + "<div>" * 1000 + "-->", False, False),
    ("<ul><li>" * 200, False, True),  # nested lists
    ("<p><b>x" * 200, False, True),  # html.parser nests these: Docling recursed for minutes on 10,000
    ("`List<String>` and Map<K, V>, a<b and c>d\n" * 2000, True, False),  # text, not markup
    (">" * 50_000 + " quote\n", True, True),
    ("".join("  " * i + "- item\n" for i in range(400)), True, True),
    ("text\n\n" + "<div>" * 2000 + "x\n", True, True),  # Docling hands HTML blocks to its HTML parser
])
def test_markup_depth(markup, markdown, deep):
    assert (markup_depth(markup.encode(), markdown=markdown) > 256) == deep


def test_precheck_limits_and_settings(tmp_path, monkeypatch):
    for var in [v for v in os.environ if v.startswith("MMRAG_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("MMRAG_MAX_FILE_MB", "1")
    monkeypatch.setenv("MMRAG_MAX_UNZIPPED_MB", "50")
    s = Settings.from_env()
    assert s.fingerprint() == Settings().fingerprint()  # limits never make indexed files stale
    limits = Limits.from_settings(s)
    big = tmp_path / "big.txt"
    big.write_bytes(b"a" * (2 * 2**20))
    with pytest.raises(LimitExceeded, match=r"file too large: 2.0 MB \(limit 1 MB, MMRAG_MAX_FILE_MB\)"):
        precheck(big, "text", limits)
    precheck(big, "video", limits)  # media: bounded by time and memory, not size
    bomb = make_zip_bomb_docx(tmp_path / "b.docx", mb=60)
    with pytest.raises(LimitExceeded, match="MMRAG_MAX_UNZIPPED_MB"):
        precheck(bomb, "docx", limits)
    not_a_zip = tmp_path / "encrypted.docx"
    not_a_zip.write_bytes(b"\xd0\xcf\x11\xe0" + b"\x00" * 600)  # an OLE container: the parser's to judge
    precheck(not_a_zip, "docx", limits)


def test_nul_bytes_are_removed_with_a_warning(tmp_path):
    blobs = BlobStore(tmp_path / "blobs")
    for name, data in [("n.md", b"# Title\n\nshel\x00duck\n"), ("n.html", b"<html><body><p>shel\x00duck</p></body></html>"),
                       ("n.txt", b"shel\x00duck\n")]:
        f = tmp_path / name
        f.write_bytes(data)
        doc = parse_file(f, detect(f), blobs, file_key=f"t:{name}", source="t", rel_path=name, content_hash="h")
        assert "1 NUL byte removed" in doc.warnings, (name, doc.warnings)
        assert "shelduck" in " ".join(b.text for b in doc.blocks), name
