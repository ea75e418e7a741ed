"""Stable identifiers: partition keys per source file, and row ids derived from content."""

from __future__ import annotations

import hashlib
from pathlib import PurePosixPath

# Dagster rejects partition keys containing these (and keys are shown in the UI, so keep them plain).
_FORBIDDEN = ("...", "\a", "\b", "\f", "\n", "\r", "\t", "\v", "\0", ",", "[", "]")


def file_key(source: str, rel_path: str) -> str:
    """`source:relative/path`: stable across runs and machines, unique across roots."""
    rel = PurePosixPath(rel_path).as_posix()
    return f"{source}:{rel}"


def split_file_key(key: str) -> tuple[str, str]:
    source, _, rel = key.partition(":")
    return source, rel


def is_valid_key(key: str) -> bool:
    return bool(key) and not any(s in key for s in _FORBIDDEN) and len(key) <= 1024


def row_id(file_key: str, block_id: str, content_hash: str) -> str:
    """Primary key of a Milvus row: re-indexing identical content yields the identical id."""
    return hashlib.sha256(f"{file_key}\x00{block_id}\x00{content_hash}".encode()).hexdigest()[:40]


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
