"""Files written whole or not at all: written aside, then renamed over the target.

A reader in another process (or the next run after a kill) sees the old file or the new one, never
half of one. The aside name carries the pid and a random part, so two writers never share it.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def aside(path: str | os.PathLike) -> str:
    """A temporary name beside `path`, unique to this write."""
    return f"{os.fspath(path)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@contextmanager
def replacing(path: str | os.PathLike) -> Iterator[str]:
    """Yield a name to write to; on success it replaces `path`, on an error it is removed."""
    tmp = aside(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_atomic(path: str | os.PathLike, data: bytes | str, encoding: str = "utf-8", mode: int = 0o666) -> Path:
    """Write `data` to `path` through a file aside and a rename; `mode` (less the umask) from the
    moment the file exists, so 0o600 is never readable by others."""
    with replacing(path) as tmp:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as f:
            f.write(data.encode(encoding) if isinstance(data, str) else data)
    return Path(path)
