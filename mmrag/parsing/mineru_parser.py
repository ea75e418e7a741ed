"""MinerU, chosen by config (`MMRAG_PDF_PARSER=mineru`): its CLI writes Markdown, Docling reads it.

MinerU 4.x parses through a local server, started here when it is not running (with MinerU's
telemetry turned off). mmrag never passes `--remote`, so documents do not leave the machine; the
"flash" tier needs no model download. Pages are not preserved by the Markdown export.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from mmrag.blocks import Block
from mmrag.parsing.docling_parser import parse_with_docling
from mmrag.parsing.errors import ParseError
from mmrag.sources.blobs import BlobStore


def mineru_version() -> str:
    try:
        return version("mineru")
    except PackageNotFoundError:
        return "absent"


_server_checked = False


def ensure_server(exe: str) -> None:
    """Start MinerU's local server if it is not running (once per process), with telemetry off."""
    global _server_checked
    if _server_checked:
        return
    status = subprocess.run([exe, "server", "status"], capture_output=True, text=True, timeout=60)
    if "not running" in (status.stdout + status.stderr).lower():
        start = subprocess.run([exe, "server", "start"], capture_output=True, text=True, timeout=300)
        if start.returncode != 0:
            raise ParseError(f"MinerU's server did not start: {(start.stderr or start.stdout).strip()[-300:]}",
                             transient=True)
        # MinerU reports usage and health-probes its vendor's cloud parse API by default; mmrag's only
        # network peers are the servers it is given, so both are turned off (the probe to loopback).
        subprocess.run([exe, "telemetry", "disable"], capture_output=True, text=True, timeout=60)
        subprocess.run([exe, "config", "set", "parse_server.remote.url", "http://127.0.0.1:9/api"],
                       capture_output=True, text=True, timeout=60)
    _server_checked = True


def parse_with_mineru(path: Path, blobs: BlobStore, timeout_s: int = 600) -> tuple[list[Block], list[str], int | None]:
    # The console script sits next to this interpreter even when the venv is not on PATH.
    local = Path(sys.executable).parent / "mineru"
    exe = str(local) if local.exists() else shutil.which("mineru")
    if exe is None:
        raise ParseError("MinerU is not installed (pip install 'mmrag[mineru]')", transient=True)
    ensure_server(exe)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.md"
        cmd = [exe, "parse", str(path), "--tier", "flash", "-p", "all", "-f", "markdown", "--no-marker",
               "--force", "--wait", str(timeout_s), "-o", str(out)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s + 30)
        except subprocess.TimeoutExpired as e:
            raise ParseError(f"MinerU timed out after {timeout_s} s") from e
        if proc.returncode != 0 or not out.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise ParseError(f"MinerU failed: {' | '.join(tail)}")
        blocks, warnings, _ = parse_with_docling(out, blobs)
    return blocks, warnings, None
