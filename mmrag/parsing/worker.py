"""A supervised parse worker: `parse_file` in a child process, under a wall-clock limit and a memory
ceiling per file.

One worker serves the files of a run (Docling and Whisper load once), started on the first file
with the "spawn" method (the parent holds torch and gRPC threads: it is never forked). When the run
ends, its worker waits up to IDLE_S for the next run of the same process and parse settings (the
data dir does not matter: each request names its blob store): `mmrag ingest` executes its runs one
after the other, and each one spawning a worker cost ~6 s of CPU (Docling imports torch even for
Markdown).

For each file the parent sends the request and waits on the pipe, polling the resident memory of the
worker and its children (ffmpeg, tesseract) every `POLL_S`. A breach kills the worker's process group
and fails the file with the limit and its setting; a worker that dies by itself fails the file with
its signal. The next file gets a fresh worker. The worker leads its own process group, dies with the
parent (PR_SET_PDEATHSIG, and on the pipe's EOF) and gives that signal to its own children too, so
a SIGKILLed ingest leaves nothing behind.

Exceptions raised by the parser come back as the same class (SkipFile, ParseError) or, for any
other, a stand-in of the same name and message: `parse_stage` reports them as before.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from mmrag.parsing.errors import ParseError, SkipFile
from mmrag.parsing.limits import LimitExceeded, Limits, check_pdf_pages, precheck

POLL_S = 0.2
IDLE_S = 60.0  # how long a worker whose run ended waits for the next run of this process
PARK_MAX_RSS = 2 * 2**30  # a worker grown past this (a large file's pages) is stopped, not kept
START_TIMEOUT_S = 600.0  # the worker's start and a parser's first load (Docling), not counted per file
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class WorkerConfig:
    """What the worker builds its parser from (picklable)."""

    blobs_root: str
    pdf_parser: str = "auto"
    frames: tuple = (0.2, 0.3, 4, True)  # video_parser.FrameOptions fields
    whisper: tuple = ("faster-whisper", "tiny.en", "")  # backend, model, language
    limits: Limits = Limits()

    def reuse_key(self) -> "WorkerConfig":
        """What a worker is started with (its parsers and limits): a worker serves any config with the
        same key, whatever its data dir (`blobs_root` travels with each request)."""
        from dataclasses import replace

        return replace(self, blobs_root="")

    @classmethod
    def from_settings(cls, s, blobs_root) -> "WorkerConfig":
        return cls(str(blobs_root), s.pdf_parser,
                   (s.video_fps, s.video_scene_threshold, s.frame_dedupe_distance, s.frame_ocr),
                   (s.whisper_backend, s.whisper_model, s.whisper_language), Limits.from_settings(s))


# -- the child ------------------------------------------------------------------------------------


def _prctl():
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _die_with_parent(prctl=None) -> None:
    """Linux: SIGKILL when the parent dies (the setting survives exec, not fork)."""
    prctl = prctl or (_prctl() if sys.platform.startswith("linux") else None)
    if prctl is not None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def _children_die_with_worker() -> None:
    """The worker's own subprocesses (ffmpeg, tesseract) get the same parent-death signal, so that a
    SIGKILL of the worker (its parent's death, a limit) leaves none behind."""
    if not sys.platform.startswith("linux"):
        return
    import subprocess

    init = subprocess.Popen.__init__
    prctl = _prctl()  # resolved here: the forked child only calls it
    if getattr(init, "_mmrag_pdeathsig", False) or prctl is None:
        return

    def preexec():
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)

    def patched(self, *args, **kw):
        if kw.get("preexec_fn") is None:
            kw["preexec_fn"] = preexec
        init(self, *args, **kw)

    patched._mmrag_pdeathsig = True
    subprocess.Popen.__init__ = patched


def _warm_up(kind: str, pdf_parser: str) -> None:
    """Load the parser a file needs before its clock starts (cached for the worker's life)."""
    from mmrag.parsing import parser_for

    if parser_for(kind, pdf_parser) == "docling":
        from docling.datamodel.base_models import InputFormat

        from mmrag.parsing.docling_parser import converter

        fmt = {"docx": InputFormat.DOCX, "pptx": InputFormat.PPTX, "xlsx": InputFormat.XLSX, "html": InputFormat.HTML,
               "markdown": InputFormat.MD, "csv": InputFormat.CSV, "pdf": InputFormat.PDF}[kind]
        converter(kind == "pdf").initialize_pipeline(fmt)


def error_reply(e: BaseException) -> tuple:
    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))[-4000:]
    if isinstance(e, (SkipFile, ParseError)):
        try:
            import pickle

            return ("raise", pickle.dumps(e), tb)
        except Exception:
            pass
    return ("error", type(e).__name__, str(e), isinstance(e, SkipFile), isinstance(e, ParseError), tb)


def worker_main(conn, config: WorkerConfig, parent_pid: int) -> None:
    """The child's loop: one request at a time, until the pipe closes."""
    try:
        os.setpgid(0, 0)  # lead a group: the parent kills it with all its children
    except OSError:
        pass
    _die_with_parent()
    if os.getppid() != parent_pid:  # the parent died before the signal was set
        os._exit(0)
    _children_die_with_worker()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    import multiprocessing

    # Started as a daemon (so an exiting parent never waits for it), yet parsers may start processes.
    multiprocessing.current_process().daemon = False

    from PIL import Image

    from mmrag.parsing import parse_file
    from mmrag.parsing.media import Transcriber
    from mmrag.parsing.video_parser import FrameOptions
    from mmrag.sources.blobs import BlobStore

    limits = config.limits
    # PIL refuses to decode beyond twice MAX_IMAGE_PIXELS: images inside documents stop at the limit.
    Image.MAX_IMAGE_PIXELS = limits.max_image_pixels // 2 if limits.max_image_pixels else None
    transcriber = Transcriber(*config.whisper[:2], language=config.whisper[2])
    frames = FrameOptions(*config.frames)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone or done
        if request is None:
            return
        if request[0] == "warm":  # a spare worker loads its parsers before its run needs it
            for kind in request[1]:
                try:
                    _warm_up(kind, config.pdf_parser)
                except Exception:
                    pass
            conn.send(("warmed",))
            continue
        path, detected, ident, blobs_root = request
        blobs = BlobStore(Path(blobs_root))  # the requesting run's data dir (a path, nothing opened)
        try:
            _warm_up(detected.kind, config.pdf_parser)
        except Exception:
            pass  # the parse itself reports what is wrong
        conn.send(("started",))
        try:
            if detected.kind == "pdf":
                check_pdf_pages(Path(path), limits)
            doc = parse_file(Path(path), detected, blobs, pdf_parser=config.pdf_parser, transcriber=transcriber,
                             frames=frames, **ident)
            reply = ("ok", doc)
        except Exception as e:  # noqa: BLE001 - every parser error goes back to the parent
            reply = error_reply(e)
        try:
            conn.send(reply)
        except Exception as e:  # an unpicklable result
            conn.send(error_reply(e))


# -- the parent -----------------------------------------------------------------------------------


_PROC_CHILDREN = os.path.exists(f"/proc/self/task/{os.getpid()}/children")


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants (0 once it is gone): Linux's /proc (a few
    small reads), else psutil."""
    if _PROC_CHILDREN:
        page = os.sysconf("SC_PAGE_SIZE")
        total, todo, seen = 0, [pid], set()
        while todo:
            p = todo.pop()
            if p in seen:
                continue
            seen.add(p)
            try:
                with open(f"/proc/{p}/statm", "rb") as f:
                    total += int(f.read().split()[1]) * page
                for tid in os.listdir(f"/proc/{p}/task"):
                    with open(f"/proc/{p}/task/{tid}/children", "rb") as f:
                        todo += [int(c) for c in f.read().split()]
            except (OSError, ValueError, IndexError):
                continue  # exited meanwhile
        return total
    try:
        import psutil

        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except Exception:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except Exception:
            continue
    return total


def rebuild_error(reply: tuple) -> BaseException:
    if reply[0] == "raise":
        import pickle

        try:
            return pickle.loads(reply[1])
        except Exception:
            return ParseError("parser failed (its error could not be read back)")
    _, name, msg, is_skip, is_parse, _tb = reply
    base = SkipFile if is_skip else ParseError if is_parse else Exception
    return type(name, (base,), {"__module__": "mmrag.parsing.worker"})(msg)


def _kill_worker(proc, conn) -> None:
    """Kill a parse worker and its children (one process group), then close its pipe."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        pass
    try:
        proc.kill()
    except Exception:
        pass
    proc.join(5)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # children left after the leader died by itself
    except (ProcessLookupError, PermissionError, OSError):
        pass
    conn.close()


def _spawn(config: WorkerConfig) -> tuple:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    parent_conn, child_conn = ctx.Pipe(duplex=True)
    proc = ctx.Process(target=worker_main, args=(child_conn, config, os.getpid()),
                       name="mmrag-parse-worker", daemon=True)
    proc.start()
    child_conn.close()
    return proc, parent_conn


# A worker started ahead of its run (`start_spare`), which the run's first parse adopts.
_spare: dict = {}
_spare_lock = threading.RLock()  # start_spare takes the kept worker under it


def start_spare(config: WorkerConfig, kinds: list[str]) -> None:
    """Start a parse worker now and have it load the parsers of `kinds` (Docling's imports and
    pipelines: some 6 s of CPU), so it overlaps what comes before the run's parse step (the CLI's
    imports, Dagster's run set-up); the worker a run of this process left (`IDLE_S`) is taken
    instead when it has the same settings. The next ParseSupervisor of the same settings in this
    process adopts it; `discard_spare` stops one nobody adopted."""
    with _spare_lock:
        if _spare:
            return
        proc, conn = _take_idle(config) or _spawn(config)  # the last run's worker, if it has the same settings
        try:
            conn.send(("warm", tuple(kinds)))
        except OSError:
            _kill_worker(proc, conn)
            return
        _spare.update(config=config, proc=proc, conn=conn)


def _pop_spare() -> tuple | None:
    """(proc, conn, config) of the spare worker, now no longer spare; None if there is none."""
    with _spare_lock:
        if not _spare:
            return None
        taken = _spare["proc"], _spare["conn"], _spare["config"]
        _spare.clear()
        return taken


def _take_spare(config: WorkerConfig) -> tuple | None:
    spare = _pop_spare()
    if spare is None:
        return None
    proc, conn, spare_config = spare
    if spare_config.reuse_key() != config.reuse_key() or not proc.is_alive():
        _kill_worker(proc, conn)
        return None
    return proc, conn


# The worker whose run ended, waiting for the next run of this process: {reuse key: (proc, conn, timer)}.
_idle: dict = {}


def _park(config: WorkerConfig, proc, conn) -> None:
    """Keep a worker for the next supervisor of the same reuse key, up to IDLE_S; one worker kept per
    process (each holds its parsers' memory), so it replaces any other."""
    key = config.reuse_key()
    timer = threading.Timer(IDLE_S, _expire, args=(key, proc))
    timer.daemon = True
    with _spare_lock:
        old = list(_idle.values())
        _idle.clear()
        _idle[key] = (proc, conn, timer)
    for old_proc, old_conn, old_timer in old:
        old_timer.cancel()
        _retire(old_proc, old_conn)
    timer.start()


def _expire(key: WorkerConfig, proc) -> None:
    with _spare_lock:
        item = _idle.get(key)
        if item is None or item[0] is not proc:
            return
        del _idle[key]
    _retire(item[0], item[1])


def _take_idle(config: WorkerConfig) -> tuple | None:
    with _spare_lock:
        item = _idle.pop(config.reuse_key(), None)
    if item is None:
        return None
    proc, conn, timer = item
    timer.cancel()
    if not proc.is_alive():
        _kill_worker(proc, conn)
        return None
    return proc, conn


def discard_idle() -> None:
    """Stop the worker kept for a next run (tests)."""
    with _spare_lock:
        items = list(_idle.values())
        _idle.clear()
    for proc, conn, timer in items:
        timer.cancel()
        _kill_worker(proc, conn)


def _retire(proc, conn) -> None:
    """Ask a worker to exit and return; a reaper thread waits up to 5 s for it, then kills its process
    group. (The worker's interpreter shutdown took 1.6 s of a run's wall when waited for; it holds
    nothing to save, and it also exits when the pipe closes.)"""
    try:
        conn.send(None)
    except Exception:
        pass

    def reap() -> None:
        proc.join(5)
        _kill_worker(proc, conn)

    threading.Thread(target=reap, name="mmrag-parse-reaper", daemon=True).start()


def discard_spare() -> None:
    """Stop a spare worker no run adopted (its run had nothing to parse, or failed before)."""
    if (spare := _pop_spare()) is not None:
        _kill_worker(*spare[:2])


class ParseSupervisor:
    """`parse(path, detected, **ident)` like ParserResource.parse, in a supervised worker.
    Use as a context manager (or call close()): one per run."""

    def __init__(self, config: WorkerConfig, reuse: bool = True):
        """`reuse`: take a worker another run of this process left (`IDLE_S`) and leave this one's for
        the next (the parse service keeps its own workers: False)."""
        self.config = config
        self.reuse = reuse
        self.limits = config.limits
        self._proc = None
        self._conn = None
        self.restarts = 0

    # lifecycle
    def __enter__(self) -> "ParseSupervisor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> None:
        found = _take_spare(self.config) or (_take_idle(self.config) if self.reuse else None)
        self._proc, self._conn = found if found else _spawn(self.config)

    def _kill(self) -> None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if proc is not None:
            _kill_worker(proc, conn)

    def close(self) -> None:
        """Done with the worker: keep it for this process's next run (`reuse`, a live worker under
        PARK_MAX_RSS), else stop it (`_retire`)."""
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if proc is None:
            return
        if self.reuse and proc.is_alive() and tree_rss(proc.pid) < PARK_MAX_RSS:
            _park(self.config, proc, conn)
        else:
            _retire(proc, conn)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def warm(self, kinds) -> None:
        """Start the worker now and load the parsers of `kinds` (the parse service, before it listens
        and after a worker was replaced). Raises ParseError when the worker dies meanwhile."""
        if self._proc is not None and not self._proc.is_alive():
            self._kill()
        if self._proc is None:
            self._start()
        try:
            self._conn.send(("warm", tuple(kinds)))
        except (BrokenPipeError, OSError):
            self._died()
        while self._wait(started=False)[0] != "warmed":  # "ready" after the imports
            pass

    # one file
    def parse(self, path: Path, detected, **ident):
        if detected.kind != "unknown" and detected.mime != "application/x-empty":  # those are skipped
            precheck(Path(path), detected.kind, self.limits)
        if self._proc is not None and not self._proc.is_alive():  # died while idle: not this file's fault
            self._kill()
        if self._proc is None:
            self._start()
        try:
            self._conn.send((str(path), detected, ident, self.config.blobs_root))
        except (BrokenPipeError, OSError):
            self._died()
        while self._wait(started=False)[0] != "started":  # "ready" after the imports, "warmed" (a spare)
            pass
        # The file's clock starts once the worker has its parser loaded.
        reply = self._wait(started=True)
        if reply[0] == "ok":
            return reply[1]
        raise rebuild_error(reply)

    def _died(self):
        code = self._proc.exitcode if self._proc is not None else None
        if code is None and self._proc is not None:
            self._proc.join(1)
            code = self._proc.exitcode
        self._kill()
        self.restarts += 1
        if code is not None and code < 0:
            raise ParseError(f"parser process died (signal {-code})")
        raise ParseError(f"parser process died (exit code {code})")

    def _breach(self, err: LimitExceeded):
        self._kill()
        self.restarts += 1
        raise err

    def _wait(self, started: bool) -> tuple:
        from multiprocessing.connection import wait

        lim = self.limits
        limit_s = (lim.timeout_s or None) if started else START_TIMEOUT_S
        ceiling = lim.memory_mb * 2**20 if lim.memory_mb else 0
        t0 = time.monotonic()
        while True:
            left = None if limit_s is None else limit_s - (time.monotonic() - t0)
            if left is not None and left <= 0:
                if started:
                    self._breach(LimitExceeded(f"parsing stopped after {lim.timeout_s:g} s (MMRAG_PARSE_TIMEOUT_S)",
                                               "MMRAG_PARSE_TIMEOUT_S"))
                self._breach(LimitExceeded(f"the parser did not start within {START_TIMEOUT_S:g} s", "", transient=True))
            ready = wait([self._conn, self._proc.sentinel], POLL_S if left is None else min(POLL_S, left))
            if self._conn in ready:
                try:
                    return self._conn.recv()
                except (EOFError, OSError):
                    self._died()
            if self._proc.sentinel in ready:
                if self._conn.poll():  # its last words first
                    continue
                self._died()
            if ceiling and tree_rss(self._proc.pid) > ceiling:
                self._breach(LimitExceeded(f"parser used more than {lim.memory_mb} MB (MMRAG_PARSE_MEMORY_MB)",
                                           "MMRAG_PARSE_MEMORY_MB"))
