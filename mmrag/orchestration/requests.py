"""The sensor's request bookkeeping, kept in its cursor between ticks (tested without Dagster)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from mmrag.manifest import DONE, FileRecord

REQUEST_TTL_S = 6 * 3600


@dataclass
class RequestBook:
    """What the sensor requested and by which run, kept in its cursor between ticks.

    A request is settled when its own run has ended, not when some other run (a CLI ingest, say)
    finished the file: settling it then made each overlapping run request the next one. When the
    run ended without finishing the file, the file is requested again, at once the first time and
    after the retry backoff from the second on, so a run that keeps failing is not relaunched every
    tick. A request whose run the daemon has not created yet is kept up to REQUEST_TTL_S. A
    deletion whose clean-up run ended with the file still indexed is requested again.
    """

    requested: dict[str, list] = field(default_factory=dict)  # key -> [size, mtime, requested at, run key]
    deleting: dict[str, str | None] = field(default_factory=dict)  # key -> clean-up run key
    retries: dict[str, list] = field(default_factory=dict)  # key -> [attempts, not before, size, mtime]

    @classmethod
    def from_cursor(cls, text: str | None, partitions: set[str]) -> "RequestBook":
        data = json.loads(text) if text else {}
        deleting = data.get("deleting", {})
        if isinstance(deleting, list):  # a cursor written before run keys were kept
            deleting = dict.fromkeys(deleting)
        retries = {k: v for k, v in data.get("retries", {}).items() if k in partitions}
        return cls(dict(data.get("requested", {})), dict(deleting), retries)

    def to_cursor(self) -> str:
        return json.dumps({"requested": self.requested, "deleting": self.deleting, "retries": self.retries})

    def run_keys(self) -> list[str]:
        """The run keys this book waits on (requests and clean-ups)."""
        return ([v[3] for v in self.requested.values() if len(v) > 3 and v[3]]
                + [v for v in self.deleting.values() if v])

    def settle(self, records: dict[str, FileRecord], exists: set[str], ended: set[str], now: float,
               retry_at, reaped: bool = False) -> list[str]:
        """Drop the requests whose run ended (`ended`: run keys) and book a retry for each file it left
        unfinished; keep those whose run exists or is not due yet. `retry_at(attempts, now)`: the
        backoff (`Settings.retry_at`). `reaped`: a dead run was marked failed this tick (for requests
        of old cursors, without a run key). Returns one warning per file requested again."""
        def finished(k: str, v: list) -> bool:
            rec = records.get(k)
            return rec is not None and rec.status in DONE and (rec.updated_at or 0) >= v[2]

        warnings, kept = [], {}
        for k, v in self.requested.items():
            run_key = v[3] if len(v) > 3 else None
            if run_key in ended or (run_key is None and finished(k, v)):
                if finished(k, v):
                    self.retries.pop(k, None)
                    continue
                n = self.retries.get(k, [0])[0] + 1
                self.retries[k] = [n, retry_at(n - 1, now) if n > 1 else now, *v[:2]]
                warnings.append(f"{k}: its run ended without indexing it (attempt {n}); requested again"
                                + (f" in {self.retries[k][1] - now:.0f} s" if n > 1 else ""))
            elif run_key in exists or (now - v[2] < REQUEST_TTL_S and (run_key is not None or not reaped)):
                kept[k] = v
        self.requested = kept
        self.deleting = {k: v for k, v in self.deleting.items() if k in records and not (v and v in ended)}
        return warnings

    def wait_reason(self, key: str, stat: list, now: float) -> str | None:
        """Why `key` (at `stat` = [size, mtime]) is not requested now, or None to request it."""
        if key in self.requested and self.requested[key][:2] == stat:
            return "requested"  # already requested at this stat; its run has not ended yet
        retry = self.retries.get(key)
        if retry and retry[2:] == stat and now < retry[1]:
            return f"next attempt in {retry[1] - now:.0f} s"  # unless the file changes
        return None

    def request(self, key: str, stat: list, now: float) -> None:
        self.requested[key] = list(stat) + [now]

    def assign(self, keys: list[str], run_key: str) -> None:
        for k in keys:
            self.requested[k] = self.requested[k][:3] + [run_key]
