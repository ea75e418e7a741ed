"""A graph write session: one writer process at a time, all or nothing.

`WriteSession` holds the writer's file lock (freed by the OS when the process dies), repairs what a
session that did not finish left (`recover`), and runs a session's steps: `begin` takes a snapshot
of the graph's files (`mmrag.graph.snapshot`) and opens the session's view of the manifest's graph
references (`SessionRefs`); `commit` persists the stores and then, in one SQLite transaction, the
references, the files' statuses and the session's id; `rollback` restores the files, reconciles the
vectors the session touched and drops the snapshot. A session that did not commit is rolled back by
the next one, in whatever process: nothing it wrote survives.

The stores themselves (LightRAG's, in `mmrag.graph.store`) are reached through the four methods of
`Stores`, so the steps here are tested without LightRAG (tests/test_graph_session.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from pathlib import Path
from typing import Iterator, Protocol

from mmrag.faults import crash_point
from mmrag.graph.snapshot import Snapshot
from mmrag.manifest import Manifest

WRITER_WAIT_S = 3600.0  # how long a write session waits for another process's session to end


class GraphSessionError(RuntimeError):
    """A write session could not keep the graph consistent (it was rolled back)."""


class Stores(Protocol):
    """What a session needs of the stores it guards."""

    def persist(self) -> None:
        """Write the in-memory stores to disk (each file aside, then renamed)."""

    def close(self) -> None:
        """Let go of the in-memory stores (the next use loads them from disk)."""

    def abandon(self) -> None:
        """Drop what a failed session has in flight (held writes, requests asked ahead), then `close`."""

    def reconcile(self, touched: dict[str, set[str]]) -> None:
        """Reopen on the restored files and rewrite or delete each vector in `touched`."""


class SessionRefs:
    """The manifest's graph references as a write session sees them. Reads fall through to the
    manifest; writes stay here until the session commits, so the references on disk always
    describe the graph on disk."""

    def __init__(self, manifest: Manifest):
        self.mf, self.cleared, self.refs = manifest, set(), {}
        self._holding: dict[tuple[str, str], set[str]] = {}  # (kind, ref) -> files holding it here

    def get(self, fk: str, kind: str) -> list[str]:
        if (fk, kind) in self.refs:
            return list(self.refs[(fk, kind)])
        return [] if fk in self.cleared else self.mf.graph_refs(fk, kind)

    def set(self, fk: str, kind: str, values) -> None:
        for r in self.refs.get((fk, kind), []):
            self._holding.get((kind, r), set()).discard(fk)
        self.refs[(fk, kind)] = sorted(set(values))
        for r in self.refs[(fk, kind)]:
            self._holding.setdefault((kind, r), set()).add(fk)

    def clear(self, fk: str) -> None:
        for kind in [k for f, k in self.refs if f == fk]:
            self.set(fk, kind, [])
            del self.refs[(fk, kind)]
        self.cleared.add(fk)

    def holders(self, kind: str, ref: str) -> list[str]:
        out = {fk for fk in self.mf.ref_holders(kind, ref) if (fk, kind) not in self.refs and fk not in self.cleared}
        return sorted(out | self._holding.get((kind, ref), set()))


class WriteSession:
    """Sessions of the graph in `snapshot.ws_dir`, named `workspace` in the manifest's commits;
    `lock_path`: the writer's lock file; `wait_s`: how long `writer` waits for another process."""

    def __init__(self, snapshot: Snapshot, manifest: Manifest, workspace: str, lock_path: Path, stores: Stores,
                 wait_s: float = WRITER_WAIT_S):
        self.snapshot, self.manifest, self.workspace = snapshot, manifest, workspace
        self.lock_path, self.stores, self.wait_s = Path(lock_path), stores, wait_s
        self.refs: SessionRefs | None = None  # set while a session is open
        self.txn: str | None = None
        self.loaded_txn: str | None = None  # the committed session whose stores this process holds

    # -- what this process holds ---------------------------------------------------------------------
    def committed(self) -> str | None:
        return self.manifest.committed_graph_txn(self.workspace)

    def loaded(self) -> None:
        """The stores were (re)loaded from disk: they hold the last committed session's graph."""
        self.loaded_txn = self.committed()

    def stale(self) -> bool:
        """Whether a session committed (in any process) since this process loaded the stores."""
        return self.committed() != self.loaded_txn

    # -- one writer ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def writer(self) -> Iterator[None]:
        """Hold the writer's lock (waiting up to `wait_s` for another process's session), repair
        what an unfinished session left, and reload stores another process committed since."""
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + self.wait_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise GraphSessionError(f"another process kept the graph at {self.snapshot.ws_dir} busy "
                                                f"for {self.wait_s:.0f} s") from None
                    time.sleep(min(0.5, max(0.01, self.wait_s / 10)))
            self.recover()
            yield
        finally:
            os.close(fd)  # releases the lock

    def recover(self) -> None:
        """A snapshot on disk is a session that did not finish: dropped if it committed, else rolled back."""
        self.snapshot.clear_incomplete()
        if self.snapshot.exists:
            txn = self.snapshot.txn
            if txn is not None and self.committed() == txn:
                self.snapshot.end()  # it committed; only the snapshot was left
            else:
                logging.getLogger(__name__).warning(
                    f"graph {self.workspace}: a write session did not finish; rolling it back")
                self.rollback()
        if self.stale():
            self.stores.close()  # another process committed since these stores were loaded: reload

    # -- a session's steps ---------------------------------------------------------------------------
    def begin(self) -> SessionRefs:
        self.txn = self.snapshot.begin()
        self.refs = SessionRefs(self.manifest)
        return self.refs

    def commit(self, updates: dict[str, dict] | None = None, deletes=()) -> None:
        """Persist the stores, then the manifest's side (references, `updates` of file records,
        `deletes` of file records) in one transaction that also records the session as committed;
        then drop the snapshot."""
        self.stores.persist()
        crash_point("graph-persisted")
        refs = self.refs
        self.manifest.commit_graph(self.workspace, self.txn, refs.cleared, refs.refs, updates, list(deletes))
        crash_point("graph-committed")
        self.loaded_txn = self.txn
        self.snapshot.end()
        self.refs = self.txn = None

    def rollback(self) -> None:
        """Back to the last commit: drop what the session has in flight and the in-memory stores,
        restore the files from the snapshot, rewrite or delete every vector the session touched, drop
        the snapshot (idempotent: a crash during it is repaired the same way)."""
        self.refs = self.txn = None
        self.stores.abandon()
        self.snapshot.restore_files()
        self.stores.reconcile(self.snapshot.journal())
        self.snapshot.end()

    @contextlib.contextmanager
    def open(self) -> Iterator[SessionRefs]:
        """One session: begin; commit is the caller's (it knows the updates); any error rolls back."""
        refs = self.begin()
        try:
            yield refs
        except BaseException:
            self.rollback()
            raise
