"""Blob garbage collection: snapshots of file versions that were re-indexed or deleted, and the
figures and frames only they produced, stay under `$MMRAG_HOME/blobs` until this sweeps them.

A blob is kept when any stage output on disk (`$MMRAG_HOME/stages/*/*.pkl`: snapshots, sidecars,
extracted images) or any Milvus row (`image_path`) names it, or when it was written or reused within
the grace period (a run in flight holds blobs that nothing names yet). Blob names are content hashes,
so a name is a reference.
"""

from __future__ import annotations

import dataclasses
import pickle
import re
from pathlib import Path

from mmrag.config import Settings
from mmrag.sources.blobs import BlobStore

_BLOB = re.compile(r"[0-9a-f]{64}(\.[A-Za-z0-9]+)?$")


def _names(obj, out: set[str], depth: int = 0) -> None:
    """Blob file names in any string inside a stage output (dicts, lists, dataclasses, pydantic)."""
    if depth > 12:
        return
    if isinstance(obj, str):
        name = obj.rsplit("/", 1)[-1]
        if _BLOB.match(name):
            out.add(name)
    elif isinstance(obj, dict):
        for v in obj.values():
            _names(v, out, depth + 1)
    elif isinstance(obj, (list, tuple, set)):
        for v in obj:
            _names(v, out, depth + 1)
    elif dataclasses.is_dataclass(obj) or hasattr(obj, "__pydantic_fields__"):
        for v in vars(obj).values():
            _names(v, out, depth + 1)


def referenced_names(settings: Settings) -> set[str]:
    from mmrag.models import factory

    names: set[str] = set()
    for pkl in sorted((settings.home / "stages").glob("*/*.pkl")):
        try:
            with open(pkl, "rb") as f:
                _names(pickle.load(f), names)
        except (OSError, EOFError, pickle.UnpicklingError) as e:
            raise RuntimeError(f"cannot read stage output {pkl} ({e}): nothing was deleted") from e
    names.update(p.rsplit("/", 1)[-1] for p in factory.milvus_store(settings).image_paths())
    return names


def collect_garbage(settings: Settings, grace_s: float = 3600.0, dry_run: bool = False) -> dict:
    blobs = BlobStore(settings.blobs_dir)
    if not Path(blobs.root).is_dir():
        return {"removed": 0, "freed_bytes": 0, "kept": 0, "dry_run": dry_run}
    return blobs.sweep(referenced_names(settings), grace_s, dry_run)
