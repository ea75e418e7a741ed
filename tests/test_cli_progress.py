"""`mmrag ingest`'s output: on a terminal (a real pseudo-terminal here) a progress bar of files done and
the running stage; without one, a line per batch, as logs want."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time

import pytest
from conftest import REPO


def _env(tmp) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMRAG_") and k != "DAGSTER_HOME"}
    env.update(MMRAG_HOME=str(tmp / "home"), MMRAG_CLIP_PRETRAINED="random", HF_HUB_OFFLINE="1",
               PYTHONPATH=str(REPO))
    return env


def _docs(tmp, names):
    root = tmp / "docs"
    root.mkdir(exist_ok=True)
    for name in names:
        (root / name).write_text(f"# {name}\n\nNotes about {name.split('.')[0]} and their nests.\n")
    return root


@pytest.mark.slow
def test_a_terminal_gets_a_progress_bar_and_a_pipe_gets_lines(tmp_path):
    root = _docs(tmp_path, ["teal.md", "wigeon.md", "garganey.md"])
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 110, 0, 0))  # a terminal of 110 columns
    proc = subprocess.Popen([sys.executable, "-m", "mmrag.cli", "ingest", str(root)], env=_env(tmp_path), cwd=REPO,
                            stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(30) == 0, out.decode(errors="replace")[-3000:]
    text = out.decode(errors="replace")
    assert "indexing" in text and "3/3 files" in text and "parsed_blocks" in text, text[-3000:]
    assert "\r" in text  # redrawn in place
    assert "  indexing 3 files" not in text  # the bar replaces the batch lines
    assert "indexed 3/3 files" in text

    # Not a terminal: the batch line, no bar.
    (root / "pintail.md").write_text("# Pintail\n\nPintails have long tails.\n")
    res = subprocess.run([sys.executable, "-m", "mmrag.cli", "ingest", str(root)], env=_env(tmp_path), cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "  indexing 1 files (docs:pintail.md … docs:pintail.md)" in res.stdout
    assert "files [" not in res.stdout + res.stderr
