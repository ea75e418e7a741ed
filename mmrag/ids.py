"""Stable identifiers: partition keys per source file, and row ids derived from content."""

from __future__ import annotations

import hashlib
import re
from pathlib import PurePosixPath

# Characters XML 1.0 cannot hold: one of them in a graph item makes LightRAG's GraphML unwritable.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffe\uffff\ud800-\udfff]")
MAX_NAME_BYTES = 500  # LightRAG's Milvus collections hold entity names in VARCHAR(512)

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


def image_ref(path: str | None) -> str:
    """What identifies an image in ids and cache keys: a local blob's file name (its sha256), never
    where the data dir lives; anything else (a URL that was never fetched) as it is."""
    if not path:
        return ""
    return path if "://" in path else PurePosixPath(path.replace("\\", "/")).name


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def xml_safe(text: str) -> str:
    """`text` with the characters XML cannot hold replaced by spaces."""
    return _XML_INVALID.sub(" ", text) if text else text


def bounded_name(name: str, limit: int = MAX_NAME_BYTES) -> str:
    """A graph entity name the stores accept: XML-safe, one line, at most `limit` UTF-8 bytes. A name
    cut short ends in a hash of the whole name, so two long names sharing a prefix stay apart."""
    name = " ".join(xml_safe(name).split())
    raw = name.encode("utf-8")
    if len(raw) <= limit:
        return name
    tag = "…#" + hashlib.sha1(raw).hexdigest()[:10]
    return raw[: limit - len(tag.encode())].decode("utf-8", "ignore").rstrip() + tag
