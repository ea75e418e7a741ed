"""What the commands share: exit codes, the source name of a folder, progress output."""

from __future__ import annotations

import re
import sys
from pathlib import Path

EXIT_FAILED_FILES, EXIT_BAD_ROOT, EXIT_BUSY, EXIT_ANSWER_FAILED = 1, 2, 3, 4


def source_name(root: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", root.name) or "root"


def progress(args, msg: str) -> None:
    # With --json, stdout carries only the JSON object; progress goes to stderr.
    print(msg, file=sys.stderr if args.json else sys.stdout, flush=True)

