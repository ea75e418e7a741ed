"""`GET /metrics` of the query API, in Prometheus' text format (prometheus_client, one registry per app).

- `mmrag_api_requests_total{route, method, status}` and `mmrag_api_request_seconds{route}` (a
  histogram): every request but /metrics itself, by its route template (`/v1/images/{row_id}`, not
  each id), so the series stay few.
- `mmrag_api_errors_total{kind}`: replies of 400 and more, by the error kind of their body
  (`invalid_request_error`, `authentication_error`, `rate_limit_error`...; `server_error` for 5xx).
- `mmrag_files{state}` and `mmrag_rows{modality}`: the index as the manifest records it, read when
  scraped (one grouped query each).
- Under `mmrag up` (its health board, `mmrag.serve.health`): `mmrag_part_up{part}` (1 works, 0 not),
  `mmrag_part_failures_total{part}` (times it became broken) and `mmrag_part_restarts_total{part}`.
"""

from __future__ import annotations

import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ERROR_KINDS = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "invalid_request_error", 422: "invalid_request_error",
               429: "rate_limit_error"}


class _IndexCollector:
    """Files by state and rows by modality, from the manifest, when scraped."""

    def __init__(self, state_path: Path):
        self.state_path = state_path

    def collect(self):
        from mmrag.manifest import Manifest

        files = GaugeMetricFamily("mmrag_files", "Files of the watched folders by state (the manifest)",
                                  labels=["state"])
        rows = GaugeMetricFamily("mmrag_rows", "Rows in the index by modality (the manifest's count)",
                                 labels=["modality"])
        try:
            by_state, text, image = Manifest(self.state_path).totals()
        except Exception:  # noqa: BLE001 - no manifest yet: nothing indexed
            by_state, text, image = {}, 0, 0
        for state, n in sorted(by_state.items()):
            files.add_metric([state], n)
        rows.add_metric(["text"], text)
        rows.add_metric(["image"], image)
        yield files
        yield rows


class _PartsCollector:
    """`mmrag up`'s parts from its health board, when scraped (nothing when no `up` runs)."""

    def __init__(self, home: Path):
        self.home = home

    def collect(self):
        from mmrag.serve import health

        board = health.read(self.home)
        if board is None:
            return
        up = GaugeMetricFamily("mmrag_part_up", "Whether a part of mmrag up works (1) or not (0)", labels=["part"])
        failures = CounterMetricFamily("mmrag_part_failures", "Times a part of mmrag up became broken", labels=["part"])
        restarts = CounterMetricFamily("mmrag_part_restarts", "Times a part of mmrag up was started again",
                                       labels=["part"])
        for name, part in sorted(board["parts"].items()):
            up.add_metric([name], 1 if part.get("state") == "ok" else 0)
            failures.add_metric([name], part.get("failures", 0))
            restarts.add_metric([name], part.get("restarts", 0))
        yield up
        yield failures
        yield restarts


class ApiMetrics:
    def __init__(self, state_path: Path, home: Path | None = None):
        self.registry = CollectorRegistry()
        self.requests = Counter("mmrag_api_requests", "HTTP requests answered", ["route", "method", "status"],
                                registry=self.registry)
        self.latency = Histogram("mmrag_api_request_seconds", "Time to answer a request", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.errors = Counter("mmrag_api_errors", "Error replies by kind", ["kind"], registry=self.registry)
        self.registry.register(_IndexCollector(Path(state_path)))
        if home is not None:
            self.registry.register(_PartsCollector(Path(home)))

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        if status >= 400:
            self.errors.labels("server_error" if status >= 500 else ERROR_KINDS.get(status, "invalid_request_error")).inc()

    def middleware(self):
        """An HTTP middleware for FastAPI that observes each request by its route template."""

        async def observe(request, call_next):
            if request.url.path == "/metrics":
                return await call_next(request)
            t0 = time.perf_counter()
            status = 500
            try:
                response = await call_next(request)
                status = response.status_code
                return response
            finally:
                route = request.scope.get("route")
                self.observe(getattr(route, "path", "unmatched"), request.method, status, time.perf_counter() - t0)

        return observe

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
