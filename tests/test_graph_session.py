"""The graph's crash safety in its parts, without LightRAG: the snapshot a write session takes
(`mmrag.graph.snapshot`) and the session object (`mmrag.graph.session`) over stores that keep one
JSON file, written aside and renamed as LightRAG's are. tests/test_graph.py and tests/test_crash.py
test the same steps end to end, with LightRAG and Milvus."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from mmrag.files import write_atomic
from mmrag.graph.session import GraphSessionError, SessionRefs, WriteSession
from mmrag.graph.snapshot import Snapshot
from mmrag.manifest import Manifest

WS = "ws"


class FileStores:
    """Stores in one JSON file (`graph.json`), loaded on first use; each vector write is journaled."""

    def __init__(self, ws_dir: Path, snapshot: Snapshot):
        self.ws_dir, self.snapshot = ws_dir, snapshot
        self.data: dict | None = None
        self.calls: list[str] = []
        self.touched: dict[str, set[str]] | None = None
        self.session: WriteSession | None = None

    def load(self) -> dict:
        if self.data is None:
            p = self.ws_dir / "graph.json"
            self.data = json.loads(p.read_text()) if p.exists() else {}
            self.session.loaded()  # as GraphStore does when it opens LightRAG
        return self.data

    def put(self, key: str, value: str) -> None:
        self.snapshot.record({"ns": "chunks", "ids": [key]})  # before "Milvus" sees it
        self.load()[key] = value

    def persist(self) -> None:
        self.calls.append("persist")
        self.ws_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.ws_dir / "graph.json", json.dumps(self.load(), sort_keys=True))

    def close(self) -> None:
        self.calls.append("close")
        self.data = None

    def abandon(self) -> None:
        self.calls.append("abandon")
        self.close()

    def reconcile(self, touched: dict[str, set[str]]) -> None:
        self.calls.append("reconcile")
        self.touched = touched
        self.load()  # reopened on the restored files


def _session(tmp_path: Path, manifest: Manifest | None = None, wait_s: float = 5.0) -> tuple[WriteSession, FileStores]:
    ws_dir = tmp_path / "graph" / WS
    snap = Snapshot(ws_dir)
    stores = FileStores(ws_dir, snap)
    mf = manifest or Manifest(tmp_path / "manifest.db")
    session = WriteSession(snap, mf, WS, tmp_path / "graph" / f".{WS}.writer.lock", stores, wait_s=wait_s)
    stores.session = session
    return session, stores


def _read(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "graph" / WS / "graph.json").read_text())


def _commit_one(session: WriteSession, stores: FileStores, fk: str, key: str, value: str) -> None:
    with session.writer(), session.open() as refs:
        stores.put(key, value)
        refs.set(fk, "chunk", [key])
        session.commit()


# -- the snapshot ------------------------------------------------------------------------------------
def test_snapshot_links_the_files_and_restores_them_as_they_were(tmp_path):
    ws = tmp_path / WS
    ws.mkdir()
    (ws / "kept.json").write_text("kept")
    (ws / "changed.json").write_text("old")
    (ws / "removed.json").write_text("removed")
    snap = Snapshot(ws)
    txn = snap.begin()
    assert snap.exists and snap.active and snap.txn == txn and len(txn) == 32
    assert os.path.samefile(snap.dir / "files" / "kept.json", ws / "kept.json")  # hard links: free
    write_atomic(ws / "changed.json", "new")  # writers replace files, never change them in place
    (ws / "removed.json").unlink()
    (ws / "created.json").write_text("created")
    snap.record({"ns": "chunks", "ids": ["c1", "c2"]})
    snap.record({"ns": "entities", "ids": ["e1"]})
    with open(snap.dir / "journal.jsonl", "a") as f:
        f.write('{"ns": "chunks", "ids": ["cut sh')  # the last line of a killed process
    snap.restore_files()
    assert not snap.active and snap.exists
    assert {p.name: p.read_text() for p in ws.iterdir()} == {"kept.json": "kept", "changed.json": "old",
                                                             "removed.json": "removed"}
    snap.restore_files()  # idempotent: a crash during a roll-back is repaired by doing it again
    assert (ws / "changed.json").read_text() == "old"
    assert snap.journal() == {"chunks": {"c1", "c2"}, "entities": {"e1"}, "relationships": set(),
                              "entity_relations": set()}
    snap.end()
    assert not snap.exists and snap.journal()["chunks"] == set()
    assert sorted(p.name for p in tmp_path.iterdir()) == [WS]  # nothing left beside the workspace


def test_snapshot_refuses_a_second_session_and_clears_one_cut_short(tmp_path):
    snap = Snapshot(tmp_path / WS)
    snap.begin()
    with pytest.raises(RuntimeError, match="recover it first"):
        snap.begin()
    snap.end()
    cut = snap.dir.with_name(snap.dir.name + ".new")  # killed while taking the snapshot
    (cut / "files").mkdir(parents=True)
    assert not snap.exists and snap.txn is None
    snap.clear_incomplete()
    assert not cut.exists()
    snap.record({"ns": "chunks", "ids": ["x"]})  # outside a session (a reader): nothing is journaled
    assert not snap.exists


# -- the session -------------------------------------------------------------------------------------
def test_a_commit_persists_then_records_references_and_the_session_in_the_manifest(tmp_path):
    session, stores = _session(tmp_path)
    mf = session.manifest
    _commit_one(session, stores, "s:a.md", "c1", "alpha")
    assert stores.calls == ["persist"] and _read(tmp_path) == {"c1": "alpha"}
    assert mf.graph_refs("s:a.md", "chunk") == ["c1"]
    assert mf.committed_graph_txn(WS) == session.loaded_txn is not None
    assert not session.snapshot.exists and session.refs is None and session.txn is None
    assert not session.stale()


def test_a_failed_session_is_rolled_back_in_the_same_process(tmp_path):
    session, stores = _session(tmp_path)
    _commit_one(session, stores, "s:a.md", "c1", "alpha")
    committed = session.manifest.committed_graph_txn(WS)
    stores.calls.clear()
    with pytest.raises(OSError, match="disk full"), session.writer(), session.open() as refs:
        stores.put("c2", "beta")
        refs.set("s:b.md", "chunk", ["c2"])
        stores.persist()  # the stores reached the disk, then the manifest's side failed
        raise OSError("disk full")
    assert stores.calls == ["persist", "abandon", "close", "reconcile"]
    assert stores.touched["chunks"] == {"c2"}
    assert _read(tmp_path) == {"c1": "alpha"}
    assert session.manifest.graph_refs("s:b.md", "chunk") == []
    assert session.manifest.committed_graph_txn(WS) == committed and not session.snapshot.exists


def test_session_refs_read_through_and_hold_writes_until_the_commit(tmp_path):
    mf = Manifest(tmp_path / "manifest.db")
    mf.commit_graph(WS, "t0", set(), {("s:a.md", "chunk"): ["c1", "c2"], ("s:b.md", "chunk"): ["c2"]})
    refs = SessionRefs(mf)
    assert refs.get("s:a.md", "chunk") == ["c1", "c2"] and refs.holders("chunk", "c2") == ["s:a.md", "s:b.md"]
    refs.clear("s:a.md")
    refs.set("s:c.md", "chunk", ["c2", "c2"])
    assert refs.get("s:a.md", "chunk") == [] and refs.holders("chunk", "c2") == ["s:b.md", "s:c.md"]
    assert mf.graph_refs("s:a.md", "chunk") == ["c1", "c2"]  # the manifest is untouched until the commit
    refs.set("s:c.md", "chunk", [])
    assert refs.holders("chunk", "c2") == ["s:b.md"]


def test_the_writer_lock_admits_one_session_and_waits_a_bounded_time(tmp_path):
    first, _ = _session(tmp_path)
    second, _ = _session(tmp_path, wait_s=0.3)
    held, release = threading.Event(), threading.Event()

    def hold():
        with first.writer():
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert held.wait(10)
        with pytest.raises(GraphSessionError, match="busy"), second.writer():
            pass
    finally:
        release.set()
        t.join()
    with second.writer():  # free again
        pass


def test_a_commit_in_another_process_makes_this_ones_stores_stale(tmp_path):
    reader, reader_stores = _session(tmp_path)
    writer, writer_stores = _session(tmp_path, manifest=Manifest(tmp_path / "manifest.db"))
    _commit_one(writer, writer_stores, "s:a.md", "c1", "alpha")
    assert reader.stale()  # loaded before that commit
    with reader.writer():
        pass
    assert reader_stores.calls == ["close"]  # reloaded from disk on next use
    reader.loaded()
    assert not reader.stale()


_CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from test_graph_session import _session
    session, stores = _session(Path({tmp!r}))
    with session.writer(), session.open() as refs:
        stores.put("c2", "beta")
        refs.set("s:b.md", "chunk", ["c2"])
        session.commit()
""")


@pytest.mark.parametrize("point, survives", [("graph-persisted", False), ("graph-committed", True)])
def test_a_session_killed_in_its_commit_is_repaired_by_the_next(tmp_path, point, survives):
    """SIGKILL at each step of the commit (`mmrag.faults.crash_point`): killed after the stores were
    persisted, the next session rolls it back; killed after the manifest's commit, it keeps it and
    only drops the snapshot."""
    session, stores = _session(tmp_path)
    _commit_one(session, stores, "s:a.md", "c1", "alpha")
    env = {**os.environ, "MMRAG_CRASH_AT": point}
    proc = subprocess.run([sys.executable, "-c", _CHILD.format(tests=str(Path(__file__).parent), tmp=str(tmp_path))],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    assert session.snapshot.exists and _read(tmp_path) == {"c1": "alpha", "c2": "beta"}
    again, again_stores = _session(tmp_path)
    with again.writer():
        pass
    assert not again.snapshot.exists
    if survives:
        assert again_stores.calls == ["close"] and _read(tmp_path) == {"c1": "alpha", "c2": "beta"}
        assert again.manifest.graph_refs("s:b.md", "chunk") == ["c2"]
    else:
        assert again_stores.calls == ["abandon", "close", "reconcile"] and again_stores.touched["chunks"] == {"c2"}
        assert _read(tmp_path) == {"c1": "alpha"} and again.manifest.graph_refs("s:b.md", "chunk") == []


def test_the_vector_journal_notes_writes_first_and_sends_upserts_in_one_batch_per_store():
    import asyncio

    from mmrag.graph.vectors import VectorJournal

    noted, sent = [], []
    journal = VectorJournal(noted.append)

    async def upsert(data):
        sent.append(data)

    for ns in ("entities", "relationships", "chunks"):
        journal.bind(ns, upsert)

    async def go():
        await journal.upsert("entities", {"e1": {"content": "a"}})
        await journal.upsert("entities", {"e2": {"content": "b"}, "e1": {"content": "a2"}})
        journal.note("chunks", ["c9"])  # a delete, noted before it is sent
        assert sent == []  # held back
        await journal.flush("chunks")  # another store's: nothing held there
        assert sent == []
        await journal.flush()
        await journal.upsert("chunks", {"c1": {}})
        journal.drop()  # a roll-back: held writes are forgotten, not sent
        await journal.flush()

    asyncio.run(go())
    assert noted == [{"ns": "entities", "ids": ["e1"]}, {"ns": "entities", "ids": ["e2", "e1"]},
                     {"ns": "chunks", "ids": ["c9"]}, {"ns": "chunks", "ids": ["c1"]}]
    assert sent == [{"e1": {"content": "a2"}, "e2": {"content": "b"}}]
