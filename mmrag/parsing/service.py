"""The parse service: supervised parse workers that outlive runs (`mmrag parse-server`, run by `mmrag up`).

Without it, each run starts a parse worker and loads Docling's pipelines in it (some 6 s of CPU per
run, most of a small file's freshness). The service keeps up to `workers` ParseSupervisors
(`mmrag.parsing.worker`) warm across runs, with the same guarantees: per-file wall-clock and
memory limits, pre-checks, a fresh worker after a breach or a death (warmed again at once, not by
the next file). Extra workers beyond the first start when runs parse at the same time and stop
after `IDLE_S` without work.

Wire: `multiprocessing.connection` on 127.0.0.1 with a random key (HMAC challenge both ways),
announced with the worker configuration in `$MMRAG_HOME/parse-service.json` (mode 0600): only a
process that can read the data dir connects. A run uses the service only when its own worker
configuration (parser, frames, Whisper, limits, blob store) is the announced one.
Messages: ("ping",) -> ("pong", live workers, why the latest did not warm up) (`mmrag up`'s health
probe); ("parse", path, detected, ident) -> ("started",) once a worker has it, then ("ok", doc)
or an error reply (`worker.error_reply`); ("busy",) when no worker frees up within the request's
wait. A path outside the watched roots (the manifest's sources) and the blob store (where the raw
stage keeps its snapshot of each file) is refused: the service reads nothing else.

The client (`ParseClient`) falls back to a worker of its own when the service is gone or busy; a
service that dies while it parses a file fails that file as transient (retried after the backoff).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Callable

from mmrag.faults import crash_point
from mmrag.parsing.errors import ParseError
from mmrag.parsing.worker import (
    START_TIMEOUT_S,
    ParseSupervisor,
    WorkerConfig,
    error_reply,
    rebuild_error,
)

log = logging.getLogger(__name__)

# Docling's input kinds, loaded before the service listens (pdf only where Docling parses PDFs).
WARM_KINDS = ("markdown", "html", "docx", "pptx", "xlsx", "csv", "pdf")
IDLE_S = 120.0  # an extra worker (beyond the first) stops after this long without a file
BUSY_WAIT_S = 20.0  # how long a request waits for a free worker before its run parses it itself


def config_key(config: WorkerConfig) -> str:
    """The worker configuration as stable JSON: a run and the service match on it."""
    return json.dumps(dataclasses.asdict(config), sort_keys=True)


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == r or path.is_relative_to(r) for r in roots)


class ParseService:
    def __init__(self, config: WorkerConfig, state_path: Path, workers: int = 2, idle_s: float = IDLE_S,
                 say: Callable[[str], None] = lambda msg: None):
        self.config, self.state_path, self.say = config, Path(state_path), say
        self.workers, self.idle_s = max(1, workers), idle_s
        self._idle: list[tuple[ParseSupervisor, float]] = []  # (supervisor, idle since)
        self._count = 0
        self._cond = threading.Condition()
        self.parsed = 0
        self.warm_error = ""  # why the latest worker did not warm up, for the health ping

    # -- the pool --------------------------------------------------------------------------------
    def _warm(self, sup: ParseSupervisor) -> None:
        """Start `sup`'s worker and load the parsers, then offer it to requests."""
        try:
            sup.warm(WARM_KINDS)
            self.warm_error = ""
        except Exception as e:  # noqa: BLE001 - the next file starts it again and reports what is wrong
            log.warning("parse worker did not warm up: %s", e)
            self.warm_error = f"a parse worker did not warm up: {type(e).__name__}: {e}"[:300]
        with self._cond:
            self._idle.append((sup, time.monotonic()))
            self._cond.notify()

    def start(self) -> None:
        """Start and warm the first worker (before the service listens)."""
        with self._cond:
            self._count += 1
        self._warm(ParseSupervisor(self.config, reuse=False))

    def _acquire(self, wait_s: float) -> ParseSupervisor | None:
        deadline = time.monotonic() + wait_s
        with self._cond:
            while True:
                if self._idle:
                    return self._idle.pop()[0]
                if self._count < self.workers:
                    self._count += 1
                    return ParseSupervisor(self.config, reuse=False)  # started by its first file
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def _release(self, sup: ParseSupervisor) -> None:
        if sup.pid is None:  # stopped after a limit or a death: warm a fresh one now, not with the next file
            threading.Thread(target=self._warm, args=(sup,), name="mmrag-parse-warm", daemon=True).start()
            return
        with self._cond:
            self._idle.append((sup, time.monotonic()))
            self._cond.notify()

    def ping(self) -> tuple:
        """("pong", live workers, why the latest did not warm up): `mmrag up`'s health probe."""
        with self._cond:
            idle = [sup for sup, _ in self._idle]
            busy = self._count - len(idle)
        return ("pong", busy + sum(1 for sup in idle if sup.pid is not None), self.warm_error)

    def reap_idle(self) -> None:
        """Stop extra workers idle for `idle_s` (the first one stays)."""
        now = time.monotonic()
        with self._cond:
            stale = [item for item in self._idle[:-1] if now - item[1] > self.idle_s] if self._count > 1 else []
            stale = stale[: self._count - 1]
            for item in stale:
                self._idle.remove(item)
                self._count -= 1
        for sup, _ in stale:
            sup.close()

    def close(self) -> None:
        with self._cond:
            idle, self._idle = self._idle, []
        for sup, _ in idle:
            sup.close()

    # -- requests --------------------------------------------------------------------------------
    def roots(self) -> list[Path]:
        from mmrag.manifest import Manifest

        # the raw stage's snapshots of the files are in the blob store
        return [Path(self.config.blobs_root).resolve(),
                *(Path(r).resolve() for r in Manifest(self.state_path).sources().values())]

    def handle(self, conn, authkey: bytes | None = None) -> None:
        """One client connection (a run's parse step): the key's handshake, then its files, one at a
        time, until it closes. The handshake runs here, not in the accept loop, so a client that
        connects and says nothing holds up only its own thread."""
        from multiprocessing import AuthenticationError
        from multiprocessing.connection import answer_challenge, deliver_challenge

        try:
            if authkey is not None:
                try:
                    deliver_challenge(conn, authkey)
                    answer_challenge(conn, authkey)
                except (AuthenticationError, EOFError, OSError):
                    return  # a port probe, a wrong key: not a client
            while True:
                try:
                    request = conn.recv()
                except (EOFError, OSError):
                    return
                if request == ("ping",):
                    conn.send(self.ping())
                    continue
                if not isinstance(request, tuple) or not request or request[0] != "parse":
                    conn.send(("error", "ValueError", f"unknown request {str(request)[:80]!r}", False, False, ""))
                    continue
                _, path, detected, ident, wait_s = request
                conn.send(self._parse(conn, Path(path), detected, ident, wait_s))
        except (EOFError, OSError, BrokenPipeError):
            return  # the run is gone
        finally:
            conn.close()

    def _parse(self, conn, path: Path, detected, ident: dict, wait_s: float) -> tuple:
        if not _inside(path.resolve(), self.roots()):
            return error_reply(ParseError(f"{path} is outside the watched folders: the parse service does not read it"))
        sup = self._acquire(wait_s)
        if sup is None:
            return ("busy",)
        t0, name = time.monotonic(), ident.get("file_key") or path.name
        try:
            conn.send(("started",))
            crash_point("parse-service")
            try:
                doc = sup.parse(path, detected, **ident)
            except Exception as e:  # noqa: BLE001 - every parser error goes back to the run
                self.say(f"{name} ({detected.kind}): {type(e).__name__} after {time.monotonic() - t0:.2f} s")
                return error_reply(e)
            self.parsed += 1
            self.say(f"{name} ({detected.kind}): parsed in {time.monotonic() - t0:.2f} s")
            return ("ok", doc)
        finally:
            self._release(sup)

    def serve(self, listener, stop: threading.Event | None = None, authkey: bytes | None = None) -> None:
        """Accept connections (a thread each) until `stop` is set or the listener closes; each
        proves it holds `authkey` first (the listener is made without one)."""
        stop = stop or threading.Event()

        def reaper() -> None:
            while not stop.wait(min(self.idle_s, 10.0)):
                self.reap_idle()

        threading.Thread(target=reaper, name="mmrag-parse-reaper", daemon=True).start()
        while not stop.is_set():
            try:
                conn = listener.accept()
            except OSError:
                if stop.is_set():
                    return
                continue
            threading.Thread(target=self.handle, args=(conn, authkey), name="mmrag-parse-client", daemon=True).start()


# -- the client ---------------------------------------------------------------------------------


class ParseClient:
    """`parse(path, detected, **ident)` like ParseSupervisor's, through the parse service. Opened on
    the first file; when the service is not there (or busy), the file goes to a worker of this
    run's own (`local`, started when first needed). A service that goes away while it parses a
    file fails that file as transient; later files go to the local worker."""

    def __init__(self, address: tuple[str, int], authkey: bytes, local: Callable[[], ParseSupervisor],
                 limits=None, busy_wait_s: float = BUSY_WAIT_S):
        self.address, self.authkey, self._make_local = tuple(address), authkey, local
        self.limits = limits
        self.busy_wait_s = busy_wait_s
        self._conn = None
        self._gone = False
        self._local: ParseSupervisor | None = None
        self.served = 0  # files the service parsed for this run

    def __enter__(self) -> "ParseClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass
            self._conn = None
        if self._local is not None:
            self._local.close()
            self._local = None

    @property
    def pid(self) -> int | None:
        return self._local.pid if self._local is not None else None

    def local(self) -> ParseSupervisor:
        if self._local is None:
            self._local = self._make_local()
        return self._local

    def _connect(self):
        if self._conn is None and not self._gone:
            from multiprocessing.connection import Client

            try:
                self._conn = Client(self.address, authkey=self.authkey)
            except Exception as e:  # noqa: BLE001 - refused, reset, wrong key: parse here
                log.info("parse service at %s:%s unavailable (%s): parsing in this run", *self.address, e)
                self._gone = True
        return self._conn

    def _drop(self) -> None:
        conn, self._conn, self._gone = self._conn, None, True
        try:
            conn.close()
        except OSError:
            pass

    def parse(self, path: Path, detected, **ident):
        conn = self._connect()
        if conn is None:
            return self.local().parse(path, detected, **ident)
        try:
            conn.send(("parse", str(path), detected, ident, self.busy_wait_s))
            reply = self._recv(self.busy_wait_s + 30.0)
        except (OSError, EOFError):
            self._drop()  # gone before it took the file: this run parses it
            return self.local().parse(path, detected, **ident)
        if reply[0] == "busy":
            return self.local().parse(path, detected, **ident)
        if reply[0] == "started":
            timeout_s = getattr(self.limits, "timeout_s", 0) or 0
            bound = START_TIMEOUT_S + timeout_s + 60.0 if timeout_s else None
            try:
                reply = self._recv(bound)
            except (OSError, EOFError):
                self._drop()
                raise ParseError("the parse service went away while parsing this file", transient=True) from None
        if reply[0] == "ok":
            self.served += 1
            return reply[1]
        raise rebuild_error(reply)

    def _recv(self, timeout_s: float | None) -> tuple:
        if not self._conn.poll(timeout_s):
            self._drop()
            raise ParseError(f"the parse service did not answer within {timeout_s:g} s", transient=True)
        return self._conn.recv()


def find_service(config: WorkerConfig, home: Path | None, use_service: bool = True):
    """(address, key) of the parse service `mmrag up` runs on this data dir for this configuration,
    or None."""
    if not use_service or home is None:
        return None
    from mmrag.serve import discovery

    return discovery.served_parser(home, config_key(config))


def supervised_parser(config: WorkerConfig, home: Path | None, use_service: bool = True):
    """The run's parser: a client of the parse service (`find_service`), else a supervised worker of
    the run's own."""
    if found := find_service(config, home, use_service):
        address, authkey = found
        return ParseClient(address, authkey, lambda: ParseSupervisor(config), limits=config.limits)
    return ParseSupervisor(config)


def serve_main(config: WorkerConfig, home: Path, state_path: Path, port: int = 0, workers: int = 2,
               say: Callable[[str], None] = print) -> int:
    """`mmrag parse-server`: warm a worker, listen on 127.0.0.1:`port`, announce, serve until SIGTERM/SIGINT."""
    import signal
    from multiprocessing.connection import Listener

    from mmrag.serve import discovery

    service = ParseService(config, state_path, workers=workers, say=say)
    t0 = time.monotonic()
    service.start()
    authkey = secrets.token_bytes(32)
    listener = Listener(("127.0.0.1", port))  # the key's handshake runs per connection (ParseService.handle)
    address = listener.address
    discovery.announce(home, discovery.PARSE, {"address": list(address), "authkey": authkey.hex(),
                                               "config": config_key(config), "workers": service.workers},
                       private=True)
    say(f"mmrag parse-server: {address[0]}:{address[1]}, {service.workers} worker(s) max, "
        f"warm in {time.monotonic() - t0:.1f} s")
    stop = threading.Event()

    def on_signal(*_):
        stop.set()
        raise SystemExit(0)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        service.serve(listener, stop, authkey)
    except (SystemExit, KeyboardInterrupt):
        pass
    finally:
        discovery.withdraw(home, discovery.PARSE)
        listener.close()
        service.close()
    return 0


def default_workers() -> int:
    raw = os.environ.get("MMRAG_PARSE_WORKERS", "").strip()
    return max(1, int(raw)) if raw.isdigit() else 2
