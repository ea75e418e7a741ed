"""Milvus Lite's gRPC server (`milvus-lite server`) as `mmrag up` runs it, with a Milvus server's ping policy.

pymilvus keeps its channels alive with HTTP/2 pings (every 10 s while calls are in flight, at most one
a minute while idle). A Milvus server permits them (its gRPC enforcement policy allows pings 5 s apart,
without calls too). Milvus Lite's server is built with gRPC's defaults (a ping at most every 5 minutes
without data, two strikes), so it closes the connection of a client idle for ~3 minutes (a run's graph
store waiting for the `mmrag_index` pool on a busy machine) with GOAWAY "too_many_pings" (measured:
after 160 s idle). pymilvus reconnects for its next call, but a call caught by the close fails with
UNAVAILABLE "Too many pings": the soak lost 7 graph steps to it (their files were retried). This process is
Milvus Lite's own command line with the server built under the permissive policy (gRPC channel
arguments, set on `grpc.server` in this process, which serves nothing else).

    python -m mmrag.serve.milvus_lite_server server --data-dir DIR --host 127.0.0.1 --port N
"""

from __future__ import annotations

import sys

# Pings from clients are welcome at any time: 5 s apart at the least, with or without calls, no strikes.
PING_POLICY = (("grpc.keepalive_permit_without_calls", 1),
               ("grpc.http2.min_ping_interval_without_data_ms", 5000),
               ("grpc.http2.max_ping_strikes", 0))


def command(data_dir: str, port: int, host: str = "127.0.0.1") -> list[str]:
    """The command line that serves the Milvus Lite data dir `data_dir` on host:port."""
    return [sys.executable, "-m", "mmrag.serve.milvus_lite_server", "server", "--data-dir", str(data_dir),
            "--host", host, "--port", str(port)]


def main(argv: list[str] | None = None) -> int:
    import grpc
    from milvus_lite.cmdline import main as lite_main

    plain = grpc.server

    def server(*args, options=None, **kw):
        return plain(*args, options=[*(options or ()), *PING_POLICY], **kw)

    grpc.server = server
    return lite_main(argv) or 0


if __name__ == "__main__":
    sys.exit(main())
