"""Nothing from outside a root is read (mmrag.sources.roots): symlinks to files outside it, symlink loops,
folder symlinks, FIFOs, sockets; a file swapped for a link after the scan. Real files, a real FIFO
and a bound unix socket; the ingest goes through the CLI and Milvus Lite."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest
from conftest import run_cli

from mmrag.index.stages import FileOutcome, RawFile, snapshot_file
from mmrag.sources.blobs import BlobStore
from mmrag.sources.roots import OutsideRoot, open_source, symlink_mode
from mmrag.sources.sync import scan_root

SECRET = "The launch code for the secret vault is Zebra Quartz Nine."


@pytest.fixture
def tricky(tmp_path):
    """A root holding a note, every kind of thing that must not be read, and a link that may be."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "vault.md").write_text(f"# Vault\n\n{SECRET}\n")
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "notes.md").write_text("# Notes\n\nPochards dive for seeds in the northern marsh.\n")
    (root / "sub" / "teal.md").write_text("# Teal\n\nTeals dabble at the edge of the reeds.\n")
    (root / "vault_link.md").symlink_to(outside / "vault.md")
    (root / "relative_out.md").symlink_to(Path("..") / "outside" / "vault.md")
    (root / "outside_dir").symlink_to(outside, target_is_directory=True)
    (root / "loop_a.md").symlink_to(root / "loop_b.md")
    (root / "loop_b.md").symlink_to(root / "loop_a.md")
    (root / "dangling.md").symlink_to(root / "missing.md")
    (root / "teal_link.md").symlink_to(root / "sub" / "teal.md")  # inside the root: followed by default
    os.mkfifo(root / "pipe.md")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock.md"))
    yield root
    sock.close()


def test_scan_lists_what_it_will_not_read_and_opens_none_of_it(tricky, monkeypatch):
    opened: list[str] = []
    real_open = os.open

    def spy(path, *a, **kw):
        opened.append(str(path))
        return real_open(path, *a, **kw)

    monkeypatch.setattr(os, "open", spy)
    done = threading.Event()
    result = {}

    def scan():  # a FIFO opened for reading would block: scan in a thread, with a deadline
        result["scan"] = scan_root(tricky, "docs")
        done.set()

    threading.Thread(target=scan, daemon=True).start()
    assert done.wait(10), "the scan blocked (did it open the FIFO?)"
    scan = result["scan"]
    assert sorted(rel for rel, *_ in scan.files.values()) == ["notes.md", "sub/teal.md", "teal_link.md"]
    reasons = dict(scan.ignored)
    assert "outside the root" in reasons["vault_link.md"] and "outside the root" in reasons["relative_out.md"]
    assert "looping" in reasons["loop_a.md"] and "looping" in reasons["loop_b.md"]
    assert "broken" in reasons["dangling.md"]
    assert "FIFO" in reasons["pipe.md"] and "socket" in reasons["sock.md"]
    assert "not walked" in reasons["outside_dir"]
    assert not [p for p in opened if "pipe" in p or "sock" in p or "vault" in p]


def test_symlinks_never_skips_links_inside_the_root_too(tricky, monkeypatch):
    monkeypatch.setenv("MMRAG_SYMLINKS", "never")
    scan = scan_root(tricky, "docs")
    assert sorted(rel for rel, *_ in scan.files.values()) == ["notes.md", "sub/teal.md"]
    assert "MMRAG_SYMLINKS=never" in dict(scan.ignored)["teal_link.md"]
    monkeypatch.setenv("MMRAG_SYMLINKS", "always")
    with pytest.raises(ValueError, match="within-root, never"):
        symlink_mode()


def test_a_file_swapped_for_a_link_after_the_scan_is_not_read(tricky, tmp_path):
    scan = scan_root(tricky, "docs")
    assert "notes.md" in {rel for rel, *_ in scan.files.values()}
    (tricky / "notes.md").unlink()
    (tricky / "notes.md").symlink_to(tmp_path / "outside" / "vault.md")
    with pytest.raises(OutsideRoot, match="outside the root"):
        open_source(tricky, "notes.md")
    blobs = BlobStore(tmp_path / "blobs")
    out = snapshot_file("docs:notes.md", "docs", str(tricky), "notes.md", blobs)
    assert isinstance(out, FileOutcome) and out.status == "skipped" and "outside the root" in out.reason
    assert not list((tmp_path / "blobs").rglob("*.md"))  # nothing of the vault was copied in
    # a folder on the way swapped for a link to an outside folder
    (tricky / "sub" / "teal.md").rename(tmp_path / "teal.md")
    (tricky / "sub").rmdir()
    (tricky / "sub").symlink_to(tmp_path / "outside", target_is_directory=True)
    (tmp_path / "outside" / "teal.md").write_text(SECRET)
    with pytest.raises(OutsideRoot, match="outside the root"):
        open_source(tricky, "sub/teal.md")
    # and a FIFO in place of a file is refused without blocking
    (tricky / "notes.md").unlink()
    os.mkfifo(tricky / "notes.md")
    with pytest.raises(OutsideRoot, match="FIFO"):
        open_source(tricky, "notes.md")
    with pytest.raises(OutsideRoot, match="outside the root"):  # its target's folder now leads outside
        open_source(tricky, "teal_link.md")
    (tricky / "kept.md").write_text("# Kept\n\nGadwalls graze.\n")
    (tricky / "kept_link.md").symlink_to("kept.md")
    ok = snapshot_file("docs:kept_link.md", "docs", str(tricky), "kept_link.md", blobs)
    assert isinstance(ok, RawFile) and ok.size == (tricky / "kept.md").stat().st_size


@pytest.mark.slow
def test_ingest_skips_them_with_reasons_and_the_outside_text_is_not_findable(tricky, mmrag_env):
    code, out = run_cli("ingest", str(tricky), "--source", "docs")
    assert code == 0, out
    skipped = {s["path"]: s["reason"] for s in out["skipped"]}
    assert {"vault_link.md", "relative_out.md", "loop_a.md", "loop_b.md", "dangling.md", "pipe.md", "sock.md",
            "outside_dir"} <= set(skipped), skipped
    assert out["indexed"] == 3
    code, res = run_cli("query", "launch code secret vault Zebra Quartz", "--top-k", "10", "--no-images")
    assert code == 0
    assert res["hits"] and not any("Zebra" in h["text"] or "vault" in h["file"] for h in res["hits"]), res["hits"]
