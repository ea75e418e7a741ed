"""Milvus Lite's gRPC server (`milvus-lite server`) as `mmrag up` runs it: Milvus Lite's own command line,
with the server built under a Milvus server's keepalive policy (`mmrag.index.lite_pings`, which the
in-process server of a local path gets too), and SIGTERM handled as Ctrl-C: Milvus Lite's own graceful
stop (in-flight calls drained for up to 5 s, the data dir closed and its lock released). Without it the
server either died at once on SIGTERM, or, started by a process that ignored SIGTERM (an ignored signal
stays ignored across exec), sat out its supervisor's grace period and was killed.

    python -m mmrag.serve.milvus_lite_server server --data-dir DIR --host 127.0.0.1 --port N
"""

from __future__ import annotations

import signal
import sys


def command(data_dir: str, port: int, host: str = "127.0.0.1") -> list[str]:
    """The command line that serves the Milvus Lite data dir `data_dir` on host:port."""
    return [sys.executable, "-m", "mmrag.serve.milvus_lite_server", "server", "--data-dir", str(data_dir),
            "--host", host, "--port", str(port)]


def main(argv: list[str] | None = None) -> int:
    from milvus_lite.cmdline import main as lite_main

    from mmrag.index.lite_pings import permit_pings

    permit_pings()
    signal.signal(signal.SIGTERM, _interrupt)
    return lite_main(argv) or 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    sys.exit(main())
