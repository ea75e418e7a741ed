"""Milvus Lite's gRPC server with a Milvus server's keepalive policy, in-process and as `up`'s server.

pymilvus keeps its channels alive with HTTP/2 pings (every 10 s while calls are in flight, at most one
a minute while idle). A Milvus server permits them (its gRPC enforcement policy allows pings 5 s apart,
without calls too). Milvus Lite builds its server with gRPC's defaults (a ping at most every 5 minutes
without data, two strikes), so it closes the connection of a client idle for ~3 minutes with GOAWAY
"too_many_pings" (measured: after 160 s idle). pymilvus reconnects for its next call, but a call caught
by the close fails with UNAVAILABLE "Too many pings": the soak lost 7 graph steps to it under `up`, and
a test process lost a graph step the same way to the server that Milvus Lite starts inside a process
for a local path. `permit_pings()` makes Milvus Lite's server builder (one function, used by its
command line and by its in-process server manager alike) add the permissive policy; nothing else in
the process sees it.
"""

from __future__ import annotations

import threading

# Pings from clients are welcome at any time: 5 s apart at the least, with or without calls, no strikes.
PING_POLICY = (("grpc.keepalive_permit_without_calls", 1),
               ("grpc.http2.min_ping_interval_without_data_ms", 5000),
               ("grpc.http2.max_ping_strikes", 0))

_done = threading.Lock()


class _GrpcWithPings:
    """The `grpc` module as Milvus Lite's server module sees it: `grpc.server` with the ping policy."""

    def __init__(self, grpc):
        self._grpc = grpc

    def __getattr__(self, name):
        return getattr(self._grpc, name)

    def server(self, *args, options=None, **kw):
        return self._grpc.server(*args, options=[*(options or ()), *PING_POLICY], **kw)


def permit_pings() -> None:
    """Idempotent: Milvus Lite's servers built from now on in this process take pings as Milvus does."""
    import grpc
    from milvus_lite.adapter.grpc import server as lite_server

    with _done:
        if not isinstance(lite_server.grpc, _GrpcWithPings):
            lite_server.grpc = _GrpcWithPings(grpc)
