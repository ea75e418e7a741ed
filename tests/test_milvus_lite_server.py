"""The Milvus Lite server `mmrag up` runs (`mmrag.serve.milvus_lite_server`), and the one Milvus Lite starts
inside a process for a local path (`mmrag.index.milvus_store.connect`), take their clients' keepalive
pings as a Milvus server does. A client pinging every second with no call in flight (pymilvus pings
every 10 s, at most once a minute while idle: the same strikes, sooner) keeps its connection; Milvus
Lite's own `milvus-lite server` answers it with GOAWAY "too_many_pings" within seconds (measured:
READY -> IDLE); a call caught by that close fails with UNAVAILABLE "Too many pings"."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import grpc
from conftest import REPO

from mmrag.serve import milvus_lite_server
from mmrag.serve.supervisor import free_port, port_open, stop_group

EAGER_PINGS = [("grpc.keepalive_time_ms", 1000), ("grpc.keepalive_timeout_ms", 5000),
               ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0),
               ("grpc.http2.min_time_between_pings_ms", 1000)]


def _pings_keep_the_connection(port: int) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=EAGER_PINGS)
    states: list[str] = []
    channel.subscribe(lambda s: states.append(s.name), try_to_connect=True)
    grpc.channel_ready_future(channel).result(timeout=30)
    time.sleep(10)  # ten pings without a call
    assert states[-1] == "READY" and states.count("READY") == 1, states  # no GOAWAY, no reconnect
    from pymilvus import MilvusClient

    client = MilvusClient(f"http://127.0.0.1:{port}")
    client.create_collection("pings", dimension=4)
    assert "pings" in client.list_collections()
    channel.close()


def test_a_client_that_pings_while_idle_keeps_its_connection(tmp_path):
    port = free_port()
    proc = subprocess.Popen(milvus_lite_server.command(tmp_path / "milvus.db", port), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not port_open(port):
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        _pings_keep_the_connection(port)
    finally:
        stop_group(proc, 30)


def test_the_in_process_server_of_a_local_path_takes_pings_too(tmp_path):
    from milvus_lite.server_manager import server_manager_instance

    from mmrag.index.milvus_store import connect

    path = str(tmp_path / "inproc.db")
    connect(path).list_collections()  # Milvus Lite starts its server in this process for the path
    _, _, port = server_manager_instance._servers[str(Path(path).resolve())]
    try:
        _pings_keep_the_connection(port)
    finally:
        from mmrag.index import milvus_store

        milvus_store._clients.pop((path, "", ""), None)
        server_manager_instance.release_server(path)


def test_sigterm_stops_the_server_cleanly_even_when_its_parent_ignored_it(tmp_path):
    """SIGTERM is Milvus Lite's graceful stop (its Ctrl-C path: "Shutting down...", the data dir closed),
    also for a server whose parent ignored SIGTERM (inherited across exec: it once sat out the whole
    grace period of its supervisor and was killed)."""
    import signal

    for ignored in (False, True):
        port, log = free_port(), tmp_path / f"milvus-{ignored}.log"
        pre = (lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN)) if ignored else None
        with open(log, "wb") as out:
            proc = subprocess.Popen(milvus_lite_server.command(tmp_path / f"m{ignored}.db", port), cwd=REPO, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=pre)
        deadline = time.monotonic() + 120
        while not port_open(port):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        t0 = time.monotonic()
        assert stop_group(proc, 30), f"not stopped by SIGTERM (parent ignored it: {ignored}):\n{log.read_text()[-2000:]}"
        assert proc.returncode == 0 and time.monotonic() - t0 < 15, (proc.returncode, time.monotonic() - t0)
        assert "Shutting down" in log.read_text()
