"""A content-addressed store under the data dir: `blobs/ab/abcdef....ext`.

Source files are snapshotted here before parsing, so a file that changes while a run reads it
cannot mix versions; extracted images (figures, frames) live here too, one copy per content.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

from mmrag.files import write_atomic


class BlobStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def path_for(self, digest: str, suffix: str = "") -> Path:
        return self.root / digest[:2] / f"{digest}{suffix}"

    def put_bytes(self, data: bytes, suffix: str = "") -> tuple[str, Path]:
        digest = hashlib.sha256(data).hexdigest()
        dest = self.path_for(digest, suffix)
        if dest.exists():
            os.utime(dest)  # in use again: blob GC's grace period starts anew
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(dest, data)
        return digest, dest

    def put_file(self, src: Path, head_bytes: int = 8192, fin: BinaryIO | None = None) -> tuple[str, int, Path, bytes]:
        """Copy `src` in while hashing it (one read); returns (sha256, size, stored path, first
        `head_bytes` bytes for type detection). `fin`: `src` already opened (by `mmrag.sources.roots`); it
        is closed here."""
        self.root.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        size = 0
        head = b""
        fd, tmp = tempfile.mkstemp(dir=self.root)
        try:
            with fin if fin is not None else open(src, "rb") as reader, os.fdopen(fd, "wb") as fout:
                while chunk := reader.read(1 << 20):
                    if len(head) < head_bytes:
                        head += chunk[: head_bytes - len(head)]
                    h.update(chunk)
                    size += len(chunk)
                    fout.write(chunk)
            digest = h.hexdigest()
            dest = self.path_for(digest, Path(src).suffix.lower())
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.exists():
                os.unlink(tmp)
                os.utime(dest)  # in use again: blob GC's grace period starts anew
            else:
                os.replace(tmp, dest)
            return digest, size, dest, head
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


    def sweep(self, keep_names: set[str], older_than_s: float, dry_run: bool = False) -> dict:
        """Delete blobs whose file name is not in `keep_names` and that were last written or reused
        more than `older_than_s` ago (a run in flight may hold fresh ones no index points to yet)."""
        import time

        cutoff = time.time() - older_than_s
        removed = kept = 0
        freed = 0
        for p in self.root.glob("??/*"):
            if not p.is_file():
                continue
            st = p.stat()
            if p.name in keep_names or st.st_mtime > cutoff:
                kept += 1
                continue
            removed += 1
            freed += st.st_size
            if not dry_run:
                p.unlink(missing_ok=True)
        return {"removed": removed, "freed_bytes": freed, "kept": kept, "dry_run": dry_run}


def hash_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hash_stream(f)


def hash_stream(f: BinaryIO) -> str:
    h = hashlib.sha256()
    while chunk := f.read(1 << 20):
        h.update(chunk)
    return h.hexdigest()
