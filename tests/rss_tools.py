"""Resident memory of `mmrag up` by part, sampled while it runs (the soak and bench/service.py)."""

from __future__ import annotations

import threading
import time

import psutil


class RssSampler:
    """Resident memory per part of `mmrag up`, polled every `every_s`: each direct child of `up` with its
    descendants (milvus, embed, parse, daemon, dagster, api, ui), except run processes (spawned by the
    daemon's code server), counted apart with their own children. `peak` by part; `series` the samples."""

    PARTS = (("milvus-lite", "milvus"), ("milvus_lite_server", "milvus"), ("embed-server", "embed"), ("parse-server", "parse"),
             ("dagster-daemon", "daemon"), ("dagster-webserver", "dagster"), (" api ", "api"), ("streamlit", "ui"),
             (" ui ", "ui"))

    def __init__(self, pid: int, every_s: float = 0.5):
        self.pid, self.every_s = pid, every_s
        self.peak: dict[str, int] = {}
        self.series: list[tuple[float, dict[str, int]]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _part(self, cmd: str) -> str:
        for needle, name in self.PARTS:
            if needle in f" {cmd} ":
                return name
        return "other"

    def sample(self) -> dict[str, int]:
        try:
            kids = psutil.Process(self.pid).children()
        except psutil.Error:
            return {}
        sums: dict[str, int] = {}
        runs: list[int] = []
        for kid in kids:
            try:
                part = self._part(" ".join(kid.cmdline()))
                tree = [kid, *kid.children(recursive=True)]
            except psutil.Error:
                continue
            run_pids: set[int] = set()
            for p in tree:
                try:  # a run: a process the daemon's code server spawned (multiprocessing's spawn_main)
                    if part == "daemon" and "spawn_main" in " ".join(p.cmdline()):
                        sub = [p, *p.children(recursive=True)]
                        run_pids.update(q.pid for q in sub)
                        runs.append(sum(q.memory_info().rss for q in sub))
                except psutil.Error:
                    continue
            for p in tree:
                if p.pid in run_pids:
                    continue
                try:
                    sums[part] = sums.get(part, 0) + p.memory_info().rss
                except psutil.Error:
                    continue
        sums["run (largest)"] = max(runs, default=0)
        sums["up (all parts)"] = sum(sums.values()) + sum(runs) - sums["run (largest)"]
        return sums

    def _loop(self) -> None:
        while not self.stop.wait(self.every_s):
            s = self.sample()
            if s:
                self.series.append((time.monotonic(), s))
                for k, v in s.items():
                    self.peak[k] = max(self.peak.get(k, 0), v)

    def result(self) -> dict[str, int]:
        self.stop.set()
        self.thread.join(5)
        return {k: round(v / 2**20) for k, v in sorted(self.peak.items())}

    def growth(self) -> dict[str, float]:
        """Per part: the peak of the last third of the samples over the peak of the middle third (a part
        whose memory grows without bound shows > 1 here in every long run)."""
        n = len(self.series)
        if n < 9:
            return {}
        mid, last = self.series[n // 3: 2 * n // 3], self.series[2 * n // 3:]
        out = {}
        for k in self.peak:
            a = max((s.get(k, 0) for _, s in mid), default=0)
            b = max((s.get(k, 0) for _, s in last), default=0)
            if a:
                out[k] = round(b / a, 2)
        return out
