"""MinerU, chosen by config (`MMRAG_PDF_PARSER=mineru`): its CLI writes Markdown, Docling reads it.

MinerU 4.x parses through a local server (`mineru server start`); mmrag never passes `--remote`,
so documents do not leave the machine. Pages are not preserved by the Markdown export.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from mmrag.blobs import BlobStore
from mmrag.blocks import Block
from mmrag.parsing.docling_parser import parse_with_docling
from mmrag.parsing.errors import ParseError


def mineru_version() -> str:
    try:
        return version("mineru")
    except PackageNotFoundError:
        return "absent"


def parse_with_mineru(path: Path, blobs: BlobStore, timeout_s: int = 600) -> tuple[list[Block], list[str], int | None]:
    exe = shutil.which("mineru")
    if exe is None:
        raise ParseError("MinerU is not installed (pip install 'mmrag[mineru]')")
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
            raise ParseError(f"MinerU failed (is `mineru server start` running?): {' | '.join(tail)}")
        blocks, warnings, _ = parse_with_docling(out, blobs)
    return blocks, warnings, None
