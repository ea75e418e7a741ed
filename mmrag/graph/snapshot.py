"""Crash safety for LightRAG's stores: the snapshot a write session takes of the graph's files when it
begins, with the session's transaction id and the journal of the vectors it touched in Milvus; what
the session object (`mmrag.graph.session`) uses to commit and to roll back.

LightRAG keeps its graph (GraphML) and key-value stores (JSON) as whole files it rewrites on every
persist, and its vectors in Milvus, written at once. A process killed half-way would leave files
cut short, files of different generations, or vectors with no graph item behind them. Here:

* every write of a LightRAG file goes to a temporary file that is renamed over the old one
  (`lightrag_adapter.patch_atomic_writes`), so a file is always whole and each write makes a new inode;
* `Snapshot.begin` hard-links the workspace's files into `.txn-<workspace>/` before a session
  writes anything (free: writers never modify a file in place), and records a transaction id;
* every upsert or delete on LightRAG's vector stores appends the ids it touches to the journal
  *before* Milvus sees it;
* a session commits by persisting LightRAG's stores and then, in ONE SQLite transaction, the
  manifest's graph references, the files' statuses and the transaction id (`Manifest.commit_graph`);
  the snapshot is removed after that;
* a snapshot found on disk is a session that did not finish: if the manifest holds its
  transaction id it committed (the snapshot is just removed), else its files are restored from the
  snapshot and each journaled vector is rewritten from the restored stores or deleted
  (`WriteSession.rollback`). The roll-back is idempotent: a crash during it is repaired the same way.

A SIGKILL loses no committed work. A power cut may lose unflushed page-cache writes (nothing here
calls fsync on every write); the next session still finds either a whole old or a whole new file.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path


class Snapshot:
    """The hard-linked copy of a workspace's files taken when a write session begins, with the
    session's transaction id and journal of touched vector ids."""

    def __init__(self, ws_dir: Path):
        self.ws_dir = Path(ws_dir)
        self.dir = self.ws_dir.parent / f".txn-{self.ws_dir.name}"
        self._journal = None

    # -- state on disk ---------------------------------------------------------------------------
    @property
    def exists(self) -> bool:
        return self.dir.exists()

    @property
    def txn(self) -> str | None:
        """The transaction id, or None for a snapshot cut short before its session wrote anything."""
        p = self.dir / "txn"
        return p.read_text().strip() or None if p.exists() else None

    # -- a session -------------------------------------------------------------------------------
    def begin(self) -> str:
        if self.exists:
            raise RuntimeError(f"a write session of {self.ws_dir} did not finish: recover it first")
        self.ws_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir.with_name(self.dir.name + ".new")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "files").mkdir(parents=True)
        names = sorted(p.name for p in self.ws_dir.iterdir() if p.is_file() and ".tmp-" not in p.name)
        for name in names:
            os.link(self.ws_dir / name, tmp / "files" / name)
        (tmp / "files.json").write_text(json.dumps(names))
        txn = uuid.uuid4().hex
        (tmp / "txn").write_text(txn)
        os.replace(tmp, self.dir)  # the snapshot exists whole or not at all
        self._journal = open(self.dir / "journal.jsonl", "a", encoding="utf-8")
        return txn

    def record(self, entry: dict) -> None:
        """Journal what a vector write is about to touch (before Milvus sees it)."""
        if self._journal is None:
            return  # outside a session (a reader): nothing to roll back
        self._journal.write(json.dumps(entry) + "\n")
        self._journal.flush()

    def close(self) -> None:
        """Stop journaling in this process; the snapshot stays on disk (as a dead process leaves it)."""
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    def end(self) -> None:
        """The session committed (or was rolled back): drop the snapshot."""
        self.close()
        if self.exists:
            trash = self.dir.with_name(self.dir.name + ".old")
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(self.dir, trash)
            shutil.rmtree(trash, ignore_errors=True)

    @property
    def active(self) -> bool:
        return self._journal is not None

    # -- roll-back -------------------------------------------------------------------------------
    def restore_files(self) -> None:
        """Put the workspace's files back as they were when the session began (idempotent)."""
        self.close()
        names = json.loads((self.dir / "files.json").read_text())
        for p in self.ws_dir.iterdir():
            if p.is_file() and p.name not in names:
                p.unlink()  # created by the session
        for name in names:
            src, dst, tmp = self.dir / "files" / name, self.ws_dir / name, self.ws_dir / f"{name}.tmp-restore"
            if tmp.exists():
                tmp.unlink()
            if dst.exists() and os.path.samefile(src, dst):
                continue  # untouched by the session (renaming a hard link onto itself would do nothing)
            os.link(src, tmp)
            os.replace(tmp, dst)

    def journal(self) -> dict[str, set[str]]:
        """Touched ids per vector store ("entities", "relationships", "chunks") and the entity names
        whose relations were deleted wholesale ("entity_relations")."""
        out: dict[str, set[str]] = {"entities": set(), "relationships": set(), "chunks": set(),
                                    "entity_relations": set()}
        p = self.dir / "journal.jsonl"
        if not p.exists():
            return out
        for line in p.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # the last line, cut short by the kill: its write never reached Milvus
            out.setdefault(entry["ns"], set()).update(entry.get("ids") or [])
        return out

    def clear_incomplete(self) -> None:
        """A snapshot that never got its transaction id: its session wrote nothing."""
        shutil.rmtree(self.dir.with_name(self.dir.name + ".new"), ignore_errors=True)
        shutil.rmtree(self.dir.with_name(self.dir.name + ".old"), ignore_errors=True)
