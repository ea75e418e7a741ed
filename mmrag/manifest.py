"""The index manifest: what each source file's partition holds, and small caches.

One SQLite file under the data dir. It records per file the content hash, the config fingerprint
it was indexed with, its outcome, its row counts and its graph contributions. Staleness,
`mmrag status` and clean-up read it; it needs no Dagster.

Statuses: `pending` (registered, never run), `indexing` (its Milvus rows are written, its graph
step has not committed: stale until it does), `indexed`, `partial` (indexed, some descriptions
extractive after model errors), `skipped`, `failed`. A failure has a kind: `content` (tied to the
file's bytes: redone only when they or the config fingerprint change) or `transient` (model server
down, timeouts: retried across syncs with backoff, `retry_at`).
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from mmrag.redact import scrub

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    file_key TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    root TEXT NOT NULL,
    rel_path TEXT NOT NULL,
    content_hash TEXT,
    size INTEGER,
    mtime REAL,
    mime TEXT,
    status TEXT NOT NULL DEFAULT 'pending',
    reason TEXT,
    fingerprint TEXT,
    parser TEXT,
    text_rows INTEGER DEFAULT 0,
    image_rows INTEGER DEFAULT 0,
    updated_at REAL,
    failure_kind TEXT,
    attempts INTEGER DEFAULT 0,
    retry_at REAL
);
CREATE TABLE IF NOT EXISTS kv_cache (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (namespace, key)
);
CREATE TABLE IF NOT EXISTS graph_refs (
    file_key TEXT NOT NULL,
    kind TEXT NOT NULL,
    ref TEXT NOT NULL,
    PRIMARY KEY (file_key, kind, ref)
);
CREATE TABLE IF NOT EXISTS sources (
    name TEXT PRIMARY KEY,
    root TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS graph_commits (
    workspace TEXT PRIMARY KEY,
    txn TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS graph_refs_ref ON graph_refs(kind, ref);
"""
# Columns added after the first release: ALTERed into older manifests when they are opened.
_ADDED_COLUMNS = {"failure_kind": "TEXT", "attempts": "INTEGER DEFAULT 0", "retry_at": "REAL"}

CONTENT, TRANSIENT = "content", "transient"  # failure kinds
DONE = ("indexed", "partial", "skipped", "failed")  # statuses a finished run leaves

FILE_COLUMNS = (
    "file_key source root rel_path content_hash size mtime mime status reason fingerprint parser "
    "text_rows image_rows updated_at failure_kind attempts retry_at"
).split()


@dataclass
class FileRecord:
    file_key: str
    source: str
    root: str
    rel_path: str
    content_hash: str | None = None
    size: int | None = None
    mtime: float | None = None
    mime: str | None = None
    status: str = "pending"
    reason: str | None = None
    fingerprint: str | None = None
    parser: str | None = None
    text_rows: int = 0
    image_rows: int = 0
    updated_at: float | None = None
    failure_kind: str | None = None
    attempts: int = 0
    retry_at: float | None = None


class Manifest:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._conn() as c:
            c.executescript(_SCHEMA)
            have = {r[1] for r in c.execute("PRAGMA table_info(files)")}
            for col, decl in _ADDED_COLUMNS.items():
                if col not in have:
                    c.execute(f"ALTER TABLE files ADD COLUMN {col} {decl}")

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=60)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            yield conn
            conn.commit()
        finally:
            conn.close()

    # -- files -----------------------------------------------------------------------------------
    def get(self, file_key: str) -> FileRecord | None:
        with self._conn() as c:
            row = c.execute(f"SELECT {','.join(FILE_COLUMNS)} FROM files WHERE file_key=?", (file_key,)).fetchone()
        return FileRecord(*row) if row else None

    def all(self, source: str | None = None) -> list[FileRecord]:
        q = f"SELECT {','.join(FILE_COLUMNS)} FROM files"
        args: tuple = ()
        if source:
            q += " WHERE source=?"
            args = (source,)
        with self._conn() as c:
            return [FileRecord(*r) for r in c.execute(q + " ORDER BY file_key", args)]

    def upsert(self, rec: FileRecord) -> None:
        rec.updated_at = time.time()
        rec.reason = scrub(rec.reason) if rec.reason else rec.reason  # errors that echo a URL or a key
        vals = [getattr(rec, k) for k in FILE_COLUMNS]
        sets = ",".join(f"{k}=excluded.{k}" for k in FILE_COLUMNS[1:])
        with self._conn() as c:
            c.execute(
                f"INSERT INTO files ({','.join(FILE_COLUMNS)}) VALUES ({','.join('?' * len(FILE_COLUMNS))}) "
                f"ON CONFLICT(file_key) DO UPDATE SET {sets}",
                vals,
            )

    def update(self, file_key: str, **fields) -> None:
        if not fields:
            return
        fields["updated_at"] = time.time()
        if fields.get("reason"):
            fields["reason"] = scrub(fields["reason"])
        sets = ",".join(f"{k}=?" for k in fields)
        with self._conn() as c:
            c.execute(f"UPDATE files SET {sets} WHERE file_key=?", (*fields.values(), file_key))

    def delete(self, file_key: str) -> None:
        with self._conn() as c:
            c.execute("DELETE FROM files WHERE file_key=?", (file_key,))
            c.execute("DELETE FROM graph_refs WHERE file_key=?", (file_key,))

    # -- sources (name -> root folder) --------------------------------------------------------------
    def set_source(self, name: str, root: str) -> None:
        with self._conn() as c:
            c.execute("INSERT OR REPLACE INTO sources (name, root) VALUES (?, ?)", (name, root))

    def sources(self) -> dict[str, str]:
        with self._conn() as c:
            return dict(c.execute("SELECT name, root FROM sources ORDER BY name"))

    # -- cache -----------------------------------------------------------------------------------
    def cache_get(self, namespace: str, key: str) -> dict | None:
        with self._conn() as c:
            row = c.execute("SELECT value FROM kv_cache WHERE namespace=? AND key=?", (namespace, key)).fetchone()
        return json.loads(row[0]) if row else None

    def cache_put(self, namespace: str, key: str, value: dict) -> None:
        with self._conn() as c:
            c.execute(
                "INSERT OR REPLACE INTO kv_cache (namespace, key, value) VALUES (?,?,?)",
                (namespace, key, json.dumps(value)),
            )

    # -- graph bookkeeping -------------------------------------------------------------------------
    def graph_refs(self, file_key: str, kind: str) -> list[str]:
        with self._conn() as c:
            return [r[0] for r in c.execute("SELECT ref FROM graph_refs WHERE file_key=? AND kind=?", (file_key, kind))]

    def committed_graph_txn(self, workspace: str) -> str | None:
        with self._conn() as c:
            row = c.execute("SELECT txn FROM graph_commits WHERE workspace=?", (workspace,)).fetchone()
        return row[0] if row else None

    def commit_graph(self, workspace: str, txn: str, cleared: set[str], refs: dict[tuple[str, str], list[str]],
                     updates: dict[str, dict] | None = None, deletes: list[str] = ()) -> None:
        """One SQLite transaction for what a graph write session did: the files whose references were
        cleared, the references set since, the files' new fields (their statuses), the files removed
        from the manifest, and the session's transaction id (which says the session committed)."""
        now = time.time()
        with self._conn() as c:
            c.execute("BEGIN IMMEDIATE")
            for fk in cleared:
                c.execute("DELETE FROM graph_refs WHERE file_key=?", (fk,))
            for (fk, kind), values in refs.items():
                c.execute("DELETE FROM graph_refs WHERE file_key=? AND kind=?", (fk, kind))
                c.executemany("INSERT OR IGNORE INTO graph_refs (file_key, kind, ref) VALUES (?,?,?)",
                              [(fk, kind, r) for r in values])
            for fk, fields in (updates or {}).items():
                if fields:
                    fields = {**fields, "updated_at": now}
                    c.execute(f"UPDATE files SET {','.join(f'{k}=?' for k in fields)} WHERE file_key=?",
                              (*fields.values(), fk))
            for fk in deletes:
                c.execute("DELETE FROM files WHERE file_key=?", (fk,))
                c.execute("DELETE FROM graph_refs WHERE file_key=?", (fk,))
            c.execute("INSERT OR REPLACE INTO graph_commits (workspace, txn) VALUES (?, ?)", (workspace, txn))

    def ref_holders_many(self, kind: str, refs) -> dict[str, list[str]]:
        """`ref_holders` for many refs in one read: {ref: files holding it} (refs nobody holds left out)."""
        refs, out = list(dict.fromkeys(refs)), {}
        with self._conn() as c:
            for i in range(0, len(refs), 500):
                part = refs[i:i + 500]
                q = f"SELECT ref, file_key FROM graph_refs WHERE kind=? AND ref IN ({','.join('?' * len(part))})"
                for ref, fk in c.execute(q, (kind, *part)):
                    out.setdefault(ref, []).append(fk)
        return out

    def ref_holders(self, kind: str, ref: str) -> list[str]:
        """Which files hold a graph item (a chunk id two files share, say)."""
        with self._conn() as c:
            return [r[0] for r in c.execute("SELECT file_key FROM graph_refs WHERE kind=? AND ref=?", (kind, ref))]
