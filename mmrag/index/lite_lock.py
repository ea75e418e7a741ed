"""One process at a time on a Milvus Lite data dir: the next one waits its turn instead of failing.

Milvus Lite locks its data dir for the whole life of the first process that opens it, and refuses
every other process at once. mmrag puts a lock of its own in front of it (`<data dir>.writer.lock`,
a `filelock.FileLock`, i.e. flock(2): released by the kernel when its process dies, even by SIGKILL),
taken before Milvus Lite is opened and kept for the life of the process, like Lite's own. A second
process waits for it, saying who holds it (`<data dir>.writer.json`), up to its wait
(`MMRAG_SLOT_WAIT_S`), then fails with `IndexBusyError`.

Where it is taken matters: `mmrag ingest` takes it before it plans and before any of its runs asks
for a Dagster pool slot (`sync_folder`), so the order is always this lock, then the `mmrag_index`
pool, then Milvus Lite: a process holding the pool never waits for a process that waits for the pool.
Every other opener (a query, `mmrag check`, a run launched by the daemon) takes it in `connect`;
`mmrag up` takes it before it starts its Milvus server on the data dir, and keeps it while it runs.
A Milvus server (MMRAG_MILVUS_URI, or the one `mmrag up` runs on the data dir) needs none of this.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Callable

from filelock import FileLock, Timeout

_held: dict[str, FileLock] = {}
_guard = threading.Lock()


class IndexBusyError(RuntimeError):
    """The index could not be opened: another process holds it for longer than this one may wait."""


def _paths(uri: str) -> tuple[Path, Path]:
    base = Path(uri).resolve()
    return base.with_name(base.name + ".writer.lock"), base.with_name(base.name + ".writer.json")


def holder(uri: str) -> str:
    """Who holds the data dir, as a phrase ('pid 123 on host (mmrag ingest docs)'), or 'another process'."""
    try:
        info = json.loads(_paths(uri)[1].read_text())
        return f"pid {info['pid']} on {info['host']} ({info['cmd']})"
    except (OSError, ValueError, KeyError):
        return "another process"


def hold(uri: str, wait_s: float, say: Callable[[str], None] = lambda msg: None,
         give_up: Callable[[], bool] = lambda: False, poll_s: float = 1.0) -> bool:
    """Take the data dir for this process (kept until it exits), waiting up to `wait_s` while another
    process holds it. Returns True once held; False if `give_up()` became true while waiting (say, a
    Milvus server was announced for this data dir meanwhile). Raises IndexBusyError after `wait_s`."""
    key = str(Path(uri).resolve())
    with _guard:
        if key in _held:
            return True
        lock_path, info_path = _paths(uri)
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(lock_path), thread_local=False)
        deadline = time.monotonic() + wait_s
        said = False
        while True:
            try:
                lock.acquire(timeout=min(poll_s, max(0.0, deadline - time.monotonic())))
                break
            except Timeout:
                if give_up():
                    return False
                if time.monotonic() >= deadline:
                    raise IndexBusyError(
                        f"the Milvus Lite index at {uri} is in use by another process ({holder(uri)}; waited "
                        f"{wait_s:.0f} s). "
                        "Milvus Lite allows one process at a time: retry when it finishes, raise "
                        "MMRAG_SLOT_WAIT_S, or point MMRAG_MILVUS_URI at a Milvus server (or run `mmrag up`, "
                        "which serves the data dir to every process).") from None
                if not said:
                    say(f"waiting for the Milvus Lite index at {uri}: in use by {holder(uri)} "
                        f"(one process at a time; up to {wait_s:.0f} s, MMRAG_SLOT_WAIT_S)")
                    said = True
        _held[key] = lock
        try:
            import sys

            prog = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("python")
            name = "mmrag" if prog.name == "mmrag" or prog.parent.parts[-2:] == ("mmrag", "cli") else prog.name
            cmd = " ".join([name, *sys.argv[1:]])[:200]
            info_path.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "cmd": cmd}))
        except OSError:
            pass  # only the waiting message reads it
        return True
