"""What may be read under a watched root: regular files whose real path is inside the root.

The scan (sensor, schedule, `mmrag ingest`) and every later read of a source file go through here, so
the same rules hold everywhere:
- a symlink to a file is followed only when its target's real path is inside the root's real path
  (`MMRAG_SYMLINKS=within-root`, the default); `never` skips every symlink. Broken and looping links
  are skipped. Directory symlinks are never walked into: a folder inside the root is walked by its own
  path, once; the link is listed as skipped.
- FIFOs, sockets and device files are skipped from `lstat`/`stat` alone, never opened (opening a FIFO
  blocks; a device can be endless).
- the read itself (`open_source`) checks again and opens the checked real path with `O_NOFOLLOW` and
  `O_NONBLOCK`, then verifies with `fstat` that it opened the same regular file: a file swapped for a
  symlink or a FIFO between the scan and the read is refused, not read.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

SYMLINKS_VAR = "MMRAG_SYMLINKS"
SYMLINK_MODES = ("within-root", "never")


class OutsideRoot(OSError):
    """A source path that may not be read (outside the root, a special file, a refused symlink)."""


def symlink_mode(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    mode = (env.get(SYMLINKS_VAR) or "within-root").strip().lower()
    if mode not in SYMLINK_MODES:
        raise ValueError(f"{SYMLINKS_VAR}={mode!r}: use one of {', '.join(SYMLINK_MODES)}")
    return mode


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def _inside(path: Path, root_real: Path) -> bool:
    return path == root_real or path.is_relative_to(root_real)


def check_source(root_real: Path, path: Path, mode: str) -> tuple[Path, os.stat_result]:
    """The real path to read for `path` (under the root whose real path is `root_real`) and its stat,
    or OutsideRoot with the reason to skip it. Opens nothing."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        if mode == "never":
            raise OutsideRoot(f"a symlink, not followed ({SYMLINKS_VAR}=never)")
        try:
            real = Path(os.path.realpath(path, strict=True))
        except OSError as e:
            raise OutsideRoot(f"a broken or looping symlink ({e.strerror or e}): not read") from None
        if not _inside(real, root_real):
            raise OutsideRoot("a symlink to a file outside the root: not read")
        st = os.stat(real)
        if stat.S_ISDIR(st.st_mode):
            raise OutsideRoot("a symlink to a folder: not walked (the folder is read by its own path)")
    else:
        real = Path(os.path.realpath(path))  # a folder on the way swapped for a link since the walk
        if not _inside(real, root_real):
            raise OutsideRoot("its real path is outside the root: not read")
    if not stat.S_ISREG(st.st_mode):
        raise OutsideRoot(f"{_kind(st.st_mode)}: not read")
    return real, st


def open_source(root: str | Path, rel: str, mode: str | None = None) -> BinaryIO:
    """Open the source file `rel` of `root` for reading under the rules above (OutsideRoot if not)."""
    root_real = Path(os.path.realpath(root))
    real, st = check_source(root_real, Path(root) / rel, symlink_mode() if mode is None else mode)
    fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        got = os.fstat(fd)
        if not stat.S_ISREG(got.st_mode) or (got.st_dev, got.st_ino) != (st.st_dev, st.st_ino):
            raise OutsideRoot("the file changed into something else while it was being read: not read")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
