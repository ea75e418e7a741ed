"""The index manifest: what each source file's partition holds, and small caches.

One SQLite file under the data dir. It records per file the content hash, the config fingerprint
it was indexed with, its outcome, its row counts and its graph contributions. Staleness,
`mmrag status` and clean-up read it; it needs no Dagster.

Statuses (`Status`): `pending` (registered, never run), `indexing` (its Milvus rows are written, its
graph step has not committed: stale until it does), `indexed`, `partial` (indexed, some descriptions
extractive after model errors), `skipped`, `failed`. A failure has a kind (`FailureKind`): `content`
(tied to the file's bytes: redone only when they or the config fingerprint change) or `transient`
(model server down, timeouts: retried across syncs with backoff, `retry_at`). `record_outcome` is the
one rule that turns an attempt into these fields.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Callable, Iterator

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
CREATE TABLE IF NOT EXISTS usage (
    file_key TEXT NOT NULL,
    model TEXT NOT NULL,
    kind TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    images INTEGER NOT NULL DEFAULT 0,
    latency_ms REAL NOT NULL DEFAULT 0,
    cache_hits INTEGER NOT NULL DEFAULT 0,
    saved_prompt_tokens INTEGER NOT NULL DEFAULT 0,
    saved_completion_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (file_key, model, kind)
);
"""
# Columns added after the first release: ALTERed into older manifests when they are opened.
_ADDED_COLUMNS = {"failure_kind": "TEXT", "attempts": "INTEGER DEFAULT 0", "retry_at": "REAL"}



class Status(StrEnum):
    """A file's state in the index (stored as its value)."""

    PENDING = "pending"  # registered, never run
    INDEXING = "indexing"  # Milvus rows written, the graph step has not committed: stale until it does
    INDEXED = "indexed"
    PARTIAL = "partial"  # indexed, some descriptions extractive after model errors (retried)
    SKIPPED = "skipped"  # not a document (empty, unknown type, a sidecar): the reason says why
    FAILED = "failed"


class FailureKind(StrEnum):
    CONTENT = "content"  # tied to the file's bytes: redone when they or the config fingerprint change
    TRANSIENT = "transient"  # model server down, timeouts: retried across syncs with backoff


CONTENT, TRANSIENT = FailureKind.CONTENT, FailureKind.TRANSIENT
DONE = (Status.INDEXED, Status.PARTIAL, Status.SKIPPED, Status.FAILED)  # statuses a finished run leaves
IN_INDEX = (Status.INDEXED, Status.PARTIAL)  # the file's rows and graph contributions are there
RETRIED = (Status.FAILED, Status.PARTIAL)  # outcomes that may ask for another attempt (`failure_kind`)

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
    status: str = Status.PENDING
    reason: str | None = None
    fingerprint: str | None = None
    parser: str | None = None
    text_rows: int = 0
    image_rows: int = 0
    updated_at: float | None = None
    failure_kind: str | None = None
    attempts: int = 0
    retry_at: float | None = None

    def transient_streak(self, content_hash: str | None) -> int:
        """Transient failures in a row on this content before now (0 after anything else)."""
        if self.failure_kind == TRANSIENT and self.content_hash == content_hash:
            return self.attempts or 0
        return 0

    def record(self, outcome: "Outcome") -> "FileRecord":
        """Take `outcome`'s status, failure kind and retry (and its reason, when it has one)."""
        for k, v in outcome.fields().items():
            setattr(self, k, v)
        return self


@dataclass(frozen=True)
class Outcome:
    """What one attempt at a file came to, as the manifest records it: `record_outcome` builds it."""

    status: Status
    reason: str | None = None
    failure_kind: FailureKind | None = None
    attempts: int = 0  # transient failures in a row on this content (the retry backoff doubles with each)
    retry_at: float | None = None

    def fields(self) -> dict:
        """The manifest columns it sets (the reason only when it has one: an indexed file keeps its notes)."""
        out = {"status": self.status, "failure_kind": self.failure_kind, "attempts": self.attempts,
               "retry_at": self.retry_at}
        if self.reason is not None:
            out["reason"] = self.reason[:2000]
        return out


def record_outcome(status: Status | str, reason: str | None = None, *, kind: FailureKind | str | None = None,
                   prior: int = 0, now: float | None = None,
                   backoff: Callable[[int, float], float] | None = None) -> Outcome:
    """The one rule for a file's outcome. A failure has a kind (`content` by default); a transient
    failure, and a `partial` file (a transient failure of its descriptions), count `prior` + 1
    attempts in a row and get their next try from `backoff(attempts, now)` (`Settings.retry_at`).
    Indexed and skipped files reset the count."""
    status = Status(status)
    if status == Status.PARTIAL:
        kind = TRANSIENT
    elif status == Status.FAILED:
        kind = FailureKind(kind or CONTENT)
    else:
        return Outcome(status, reason)
    attempts = prior + 1
    retry_at = None
    if kind == TRANSIENT:
        now = time.time() if now is None else now
        retry_at = backoff(attempts, now) if backoff else now
    return Outcome(status, reason, kind, attempts, retry_at)


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

    def totals(self) -> tuple[dict[str, int], int, int]:
        """(files by status, text rows, image rows) over every source: two grouped queries."""
        with self._conn() as c:
            by_status = dict(c.execute("SELECT status, COUNT(*) FROM files GROUP BY status"))
            text, image = c.execute("SELECT COALESCE(SUM(text_rows), 0), COALESCE(SUM(image_rows), 0) FROM files").fetchone()
        return by_status, int(text), int(image)

    def done_since(self, keys: list[str], since: float) -> int:
        """How many of `keys` reached a final state (in the index, skipped, failed) at or after `since`."""
        final = (*IN_INDEX, Status.SKIPPED, Status.FAILED)
        done = 0
        with self._conn() as c:
            for i in range(0, len(keys), 500):
                part = keys[i:i + 500]
                done += c.execute(f"SELECT COUNT(*) FROM files WHERE file_key IN ({','.join('?' * len(part))}) "
                                  f"AND updated_at >= ? AND status IN ({','.join('?' * len(final))})",
                                  (*part, since, *final)).fetchone()[0]
        return done

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
            _fold_usage(c, file_key)

    # -- model usage (mmrag.models.usage) ---------------------------------------------------------
    def add_usage(self, rows) -> None:
        """Add usage to the files' sums: `rows` {(file key, model, kind): Usage} (a `UsageMeter`'s
        snapshot). Cumulative: a file re-indexed adds what the new requests used."""
        from mmrag.models.usage import COUNTS

        items = [(k, u) for k, u in dict(rows).items() if u]
        if not items:
            return
        cols = ",".join(COUNTS)
        sets = ",".join(f"{f}={f}+excluded.{f}" for f in COUNTS)
        with self._conn() as c:
            c.executemany(f"INSERT INTO usage (file_key, model, kind, {cols}) VALUES (?,?,?,{','.join('?' * len(COUNTS))}) "
                          f"ON CONFLICT(file_key, model, kind) DO UPDATE SET {sets}",
                          [(*k, *(getattr(u, f) for f in COUNTS)) for k, u in items])

    def usage(self, file_keys=None, sources=None) -> dict:
        """{(file key, model, kind): Usage}: of `file_keys`, or of the files of `sources`, or all
        (with the rows of shared work, "", and of deleted files, `mmrag.models.usage.DELETED`)."""
        from mmrag.models.usage import COUNTS, Usage

        q, args = f"SELECT file_key, model, kind, {','.join(COUNTS)} FROM usage", ()
        if file_keys is not None:
            keys = list(file_keys)
            q, args = q + f" WHERE file_key IN ({','.join('?' * len(keys))})", tuple(keys)
        elif sources is not None:
            prefixes = [f"{s}:" for s in sources]
            q += " WHERE " + (" OR ".join("substr(file_key, 1, ?) = ?" for _ in prefixes) or "0")
            args = tuple(x for p in prefixes for x in (len(p), p))
        with self._conn() as c:
            return {tuple(r[:3]): Usage(*r[3:]) for r in c.execute(q, args)}

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
                _fold_usage(c, fk)
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

    def all_graph_refs(self) -> dict[str, dict[str, set[str]]]:
        """{kind: {file_key: refs}} of every file (the index audit)."""
        out: dict[str, dict[str, set[str]]] = {}
        with self._conn() as c:
            for fk, kind, ref in c.execute("SELECT file_key, kind, ref FROM graph_refs"):
                out.setdefault(kind, {}).setdefault(fk, set()).add(ref)
        return out

    def drop_graph_refs(self, file_keys) -> None:
        """Forget the graph references of files the manifest no longer lists (the audit's repair)."""
        with self._conn() as c:
            c.executemany("DELETE FROM graph_refs WHERE file_key=? AND file_key NOT IN (SELECT file_key FROM files)",
                          [(k,) for k in file_keys])

    def ref_holders(self, kind: str, ref: str) -> list[str]:
        """Which files hold a graph item (a chunk id two files share, say)."""
        with self._conn() as c:
            return [r[0] for r in c.execute("SELECT file_key FROM graph_refs WHERE kind=? AND ref=?", (kind, ref))]


def _fold_usage(c: sqlite3.Connection, file_key: str) -> None:
    """A deleted file's usage rows go; what they count moves to the rows of deleted files
    (`mmrag.models.usage.DELETED`, one per model and kind), so the index's totals keep what was spent."""
    from mmrag.models.usage import COUNTS, DELETED

    cols = ",".join(COUNTS)
    c.execute(f"INSERT INTO usage (file_key, model, kind, {cols}) SELECT ?, model, kind, {cols} FROM usage "
              f"WHERE file_key=? ON CONFLICT(file_key, model, kind) DO UPDATE SET "
              + ",".join(f"{f}={f}+excluded.{f}" for f in COUNTS), (DELETED, file_key))
    c.execute("DELETE FROM usage WHERE file_key=?", (file_key,))
