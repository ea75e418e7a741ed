"""A test hook that kills the process at a named step, so the crash tests can stop a real ingest
exactly where a SIGKILL, an OOM kill or a power cut could: `MMRAG_CRASH_AT=graph` kills at the
first "graph" point, `graph:3` at the third. Unset (always, outside tests) it does nothing.

Points: `parse` (a file parsed), `describe` (a file described), `milvus` (a file's rows written,
its status `indexing`), `graph` (a file's graph in memory and its vectors in Milvus, nothing
persisted), `graph-persisted` (LightRAG's files written, the manifest not yet), `graph-committed`
(the manifest committed, the snapshot not yet dropped), `cleanup` (a deleted file's rows removed,
its graph and manifest entry not yet), `parse-service` (the parse service took a file, kills the service).

`MMRAG_FAIL_AT=definitions` raises while the Dagster definitions load (a code location that fails to
load, for `mmrag up`'s health test).

`MMRAG_PLANT=milvus-stale-row:<file key>` plants a fault instead of a kill: right after the stage
wrote that file's rows, a copy of one under another id (what a second writer on the same collections,
or a lost delete, leaves), so the asset check must catch it.
"""

from __future__ import annotations

import os
import signal
import sys
from collections import Counter

_hits: Counter[str] = Counter()


def crash_point(name: str) -> None:
    spec = os.environ.get("MMRAG_CRASH_AT")
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    _hits[name] += 1
    if _hits[name] == int(nth or 1):
        sys.stderr.write(f"mmrag: MMRAG_CRASH_AT={spec}: killing this process (pid {os.getpid()})\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def fail_point(name: str) -> None:
    """`MMRAG_FAIL_AT=<name>` raises here (tests only: `definitions` makes the code location fail to load,
    as a broken install or a bad setting would, for `mmrag up`'s health test). Unset, nothing."""
    if os.environ.get("MMRAG_FAIL_AT") == name:
        raise RuntimeError(f"MMRAG_FAIL_AT={name}: failing here on purpose (a test)")


def plant_point(name: str, file_key: str, store) -> None:
    """Plant `MMRAG_PLANT`'s fault at a named step for one file (tests only; unset, nothing)."""
    spec = os.environ.get("MMRAG_PLANT")
    if not spec:
        return
    what, _, key = spec.partition(":")
    if what != f"{name}-stale-row" or key != file_key:
        return
    from mmrag.index.milvus_store import TEXT, quote

    name_ = store.collection(TEXT)
    rows = store.client.query(name_, filter=f"file_key == {quote(file_key)}", output_fields=["*"], limit=1)
    if rows:
        row = {k: v for k, v in rows[0].items() if k != "sparse"} | {"id": f"planted-{rows[0]['id'][:30]}"}
        store.client.insert(name_, [row])
        sys.stderr.write(f"mmrag: MMRAG_PLANT={spec}: planted a stale row for {file_key}\n")
