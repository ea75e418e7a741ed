"""`mmrag ingest`'s progress bar on a terminal (tqdm): files done of the plan's total, and the stage
the running Dagster run is in. Without a terminal (or with --json) the CLI prints a line per batch
instead, as logs want.

While a run executes in this process, a thread polls every `POLL_S`: the run's latest STEP_START in
the instance's event log (the stage), and the manifest for the run's files that reached a final
state since the run began (a file is done when its graph step commits it, or it failed or was
skipped on the way).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from pathlib import Path

POLL_S = 0.5


def wanted(json_output: bool, stream=None) -> bool:
    """A bar only on a terminal, and never when stdout carries JSON for a program."""
    stream = stream or sys.stderr
    return not json_output and hasattr(stream, "isatty") and stream.isatty()


class IngestBar:
    def __init__(self, total: int, state_path: Path, stream=None):
        import os

        from tqdm import tqdm

        from mmrag.manifest import Manifest

        self.manifest = Manifest(Path(state_path))
        if stream is None:
            # A copy of the terminal's descriptor: while steps run, Dagster redirects fds 1 and 2 to its
            # compute logs, and the bar must still reach the terminal.
            stream = self._own = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1)
        else:
            self._own = None
        import shutil

        width = shutil.get_terminal_size((100, 24)).columns or 100  # a terminal of size 0x0 says 0
        self.bar = tqdm(total=total, unit="file", desc="indexing", file=stream, ncols=min(width, 120),
                        bar_format="{desc} {bar} {n_fmt}/{total_fmt} files [{elapsed}<{remaining}]{postfix}")
        self._before = 0  # files done in earlier runs of this ingest

    @contextlib.contextmanager
    def run(self, instance, run_id: str, keys: list[str]):
        """Follow one run (executing in this thread's caller) until the block ends."""
        stop = threading.Event()
        since = time.time() - 1.0  # the manifest's clock and this one are the same machine's

        def poll() -> None:
            from dagster import DagsterEventType

            while not stop.wait(POLL_S):
                try:
                    steps = instance.all_logs(run_id, of_type=DagsterEventType.STEP_START)
                    if steps:
                        self.bar.set_postfix_str(steps[-1].dagster_event.step_key, refresh=False)
                    self.bar.n = self._before + self.manifest.done_since(keys, since)
                    self.bar.refresh()
                except Exception:  # noqa: BLE001 - a missed update is no reason to disturb the run
                    continue

        thread = threading.Thread(target=poll, name="mmrag-progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(5)
            try:
                self.bar.n = self._before + self.manifest.done_since(keys, since)
            except Exception:  # noqa: BLE001
                self.bar.n = self._before + len(keys)
            self._before = self.bar.n
            self.bar.refresh()

    def close(self) -> None:
        self.bar.set_postfix_str("done", refresh=False)
        self.bar.close()
        if self._own is not None:
            self._own.close()
