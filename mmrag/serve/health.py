"""The health of `mmrag up`'s parts: a part that listens but does not work is not "running".

`up`'s supervisor probes each part every few seconds (`HealthMonitor`, a thread beside its loop) and
keeps one `PartHealth` per part: `starting`, `ok`, `broken` (with the reason and the log to read),
`restarting` (its process exited; the supervisor starts it again) or `stopped`. Each change is said on
`up`'s terminal at once, and the board is written to `$MMRAG_HOME/health.json` (a discovery file, so
it counts only while `up` lives) for `GET /healthz`, `mmrag status` and `/metrics` to read.

What "works" means, part by part (`probes`):
- milvus: the server answers `list_collections` (gRPC), not only a connect;
- embed: `POST /v1/embeddings` embeds a word with the served text model (GET /health when it serves CLIP only);
- parse: the service answers a `ping` over its authenticated connection, with a live worker;
- daemon: Dagster's own daemon heartbeats are fresh and carry no error (`get_daemon_statuses`), and
  the `watch_folders` sensor ticked within 3 intervals (+ a start-up grace while the daemon loads the
  code location; a code location that fails to load never ticks) and its last tick did not fail;
- runs: no run failed at launch (ended FAILURE without ever recording the process that executes it)
  since the last run that started;
- dagster: the webserver's GraphQL lists every code location loaded (a location that fails to load is
  named with its error within seconds of the webserver starting);
- api, ui: their own health routes answer 200 (`/healthz`, `/_stcore/health`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

HEALTH = "health.json"  # under MMRAG_HOME, written by `up` (mmrag.serve.discovery)
STATES = ("starting", "ok", "broken", "restarting", "stopped")
PROBE_EVERY_S = 3.0
START_GRACE_S = 90.0
PROBE_TIMEOUT_S = 12.0  # a probe that has not answered by then counts as "broken" (each waits up to 10 s itself)  # a part may take this long after (re)start before "not yet working" is "broken"

Probe = Callable[[], tuple[bool, str]]  # -> (works, why not)


class Broken(Exception):
    """Raised by a probe for a failure no start-up grace excuses (a code location that failed to load)."""


@dataclass
class PartHealth:
    state: str = "starting"
    since: float = 0.0
    reason: str = ""
    log: str = ""
    failures: int = 0  # times it became broken
    restarts: int = 0  # times its process was started again
    checked: float = 0.0


class HealthBoard:
    """The parts' states; says each change (`say`) and writes them to `home`/health.json."""

    def __init__(self, home: Path, names: list[str], say: Callable[[str], None] = print, logs: dict | None = None):
        self.home, self.say = Path(home), say
        now = time.time()
        self.parts = {n: PartHealth(since=now, log=str((logs or {}).get(n, ""))) for n in names}
        self._lock = threading.Lock()

    def set(self, name: str, state: str, reason: str = "") -> None:
        assert state in STATES, state
        with self._lock:
            part = self.parts.setdefault(name, PartHealth(since=time.time()))
            part.checked = time.time()
            if part.state == state and (state != "broken" or part.reason == reason):
                return
            before, part.state, part.reason, part.since = part.state, state, reason, time.time()
            if state == "broken":
                part.failures += 1
            if state == "restarting":
                part.restarts += 1
        if state == "broken":
            self.say(f"mmrag up: {name} is BROKEN: {reason}" + (f" (log: {part.log})" if part.log else ""))
        elif state == "ok" and before in ("broken", "restarting"):
            self.say(f"mmrag up: {name} works again")
        self.write()

    def write(self) -> None:
        from mmrag.serve import discovery

        with self._lock:
            parts = {n: asdict(p) for n, p in self.parts.items()}
        try:
            discovery.announce(self.home, HEALTH, {"parts": parts, "updated": time.time()})
        except OSError:
            pass  # a read-only data dir: the terminal still says it

    def overall(self) -> str:
        return summarize({n: asdict(p) for n, p in self.parts.items()})


def summarize(parts: dict) -> str:
    """"ok" when every part works, "starting" while any is still starting, else "degraded"."""
    states = {p.get("state") for p in parts.values()}
    if states <= {"ok"}:
        return "ok"
    if states <= {"ok", "starting"}:
        return "starting"
    return "degraded"


def read(home: Path, max_age_s: float = 30.0) -> dict | None:
    """`up`'s latest board ({"status", "parts", "updated"}), or None when no `up` runs on this data dir;
    status "unknown" when the board is older than `max_age_s` (its probes are stuck)."""
    from mmrag.serve import discovery

    info = discovery.lookup(home, HEALTH)
    if not info:
        return None
    parts = info.get("parts") or {}
    age = time.time() - float(info.get("updated", 0))
    if age > max_age_s:  # `up` lives but its probes are stuck: nothing can be vouched for
        return {"status": "unknown", "parts": parts, "updated": info["updated"],
                "reason": f"mmrag up's health board was last updated {age:.0f} s ago"}
    return {"status": summarize(parts), "parts": parts, "updated": info["updated"]}


class HealthMonitor:
    """Runs the probes every `every_s` in a thread; a part whose process is not alive is left to the
    supervisor (it says `restarting`/`stopped`)."""

    def __init__(self, board: HealthBoard, probes: dict[str, Probe], alive: Callable[[str], bool],
                 started_at: Callable[[str], float], every_s: float = PROBE_EVERY_S, grace_s: float = START_GRACE_S):
        self.board, self.probes, self.alive, self.started_at = board, probes, alive, started_at
        self.every_s, self.grace_s = every_s, grace_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mmrag-health", daemon=True)
        self._pending: dict[str, tuple] = {}  # part -> (its latest probe's future, started)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self, name: str, probe: Probe) -> tuple[bool, str]:
        """The probe's answer, or "did not answer" after PROBE_TIMEOUT_S: each probe runs in a thread of its
        own, so one that hangs (a frozen service accepts the connection and never answers) holds up
        neither the others nor the board; while it hangs, the part stays broken."""
        import concurrent.futures as cf

        pending = self._pending.get(name)
        if pending is not None and not pending[0].done():
            return False, f"did not answer a health probe for {time.time() - pending[1]:.0f} s"
        future = cf.Future()

        def run() -> None:
            try:
                future.set_result(probe())
            except Broken as e:
                future.set_result((False, str(e), True))
            except Exception as e:  # noqa: BLE001 - a probe that fails is an answer
                future.set_result((False, f"{type(e).__name__}: {e}"))

        self._pending[name] = (future, time.time())
        threading.Thread(target=run, name=f"mmrag-health-{name}", daemon=True).start()
        try:
            return future.result(PROBE_TIMEOUT_S)
        except cf.TimeoutError:
            return False, f"did not answer a health probe within {PROBE_TIMEOUT_S:g} s"

    def check_once(self) -> None:
        for name, probe in self.probes.items():
            if self._stop.is_set():
                return
            if not self.alive(name):
                continue
            works, why, *definite = self._run(name, probe)
            if works:
                self.board.set(name, "ok")
            elif not definite and time.time() - self.started_at(name) < self.grace_s and self.board.parts[name].state in ("starting",
                                                                                                            "restarting"):
                continue  # still loading
            else:
                self.board.set(name, "broken", why[:500])
        self.board.write()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.check_once()


# -- probes --------------------------------------------------------------------------------------

def http_probe(url: str, timeout_s: float = 5.0) -> Probe:
    def probe() -> tuple[bool, str]:
        import httpx

        try:
            r = httpx.get(url, timeout=timeout_s)
        except httpx.HTTPError as e:
            return False, f"GET {url}: {type(e).__name__}: {e}"
        return (True, "") if r.status_code == 200 else (False, f"GET {url} answered {r.status_code}: {r.text[:200]}")

    return probe


WORKSPACE_QUERY = ("{ workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus "
                   "locationOrLoadError { __typename ... on PythonError { message causes { message } } } } } } }")


def webserver_probe(base: str, timeout_s: float = 10.0) -> Probe:
    """dagster-webserver answers, and every code location of the workspace loaded (its GraphQL
    `workspaceOrError`): a location that fails to load makes the sensor and every run fail the same way."""

    def probe() -> tuple[bool, str]:
        import httpx

        try:
            r = httpx.post(f"{base}/graphql", json={"query": WORKSPACE_QUERY}, timeout=timeout_s)
        except httpx.HTTPError as e:
            return False, f"POST {base}/graphql: {type(e).__name__}: {e}"
        if r.status_code != 200:
            return False, f"POST {base}/graphql answered {r.status_code}: {r.text[:200]}"
        try:
            entries = r.json()["data"]["workspaceOrError"]["locationEntries"]
        except (ValueError, KeyError, TypeError):
            return False, f"the webserver's workspace query answered {r.text[:200]}"
        for entry in entries:
            err = entry.get("locationOrLoadError") or {}
            if err.get("__typename") == "PythonError":
                root = (err.get("causes") or [err])[-1]  # the cause at the bottom of the chain says what broke
                first = next((ln for ln in str(root.get("message", "")).splitlines() if ln.strip()), "")
                raise Broken(f"code location {entry['name']} failed to load: {first.strip()[:300]}")
        loading = [e["name"] for e in entries if e.get("loadStatus") == "LOADING"]
        return (False, f"code location {', '.join(loading)} still loading") if loading else (True, "")

    return probe


def embed_probe(url: str, model: str, timeout_s: float = 10.0) -> Probe:
    """The embedding service embeds a word with `model` (its text model); GET /health without one."""
    if not model:
        return http_probe(url.rstrip("/").removesuffix("/v1") + "/health", timeout_s)

    def probe() -> tuple[bool, str]:
        import httpx

        try:
            r = httpx.post(f"{url.rstrip('/')}/embeddings", json={"model": model, "input": ["health"]}, timeout=timeout_s)
        except httpx.HTTPError as e:
            return False, f"POST {url}/embeddings: {type(e).__name__}: {e}"
        if r.status_code != 200:
            return False, f"POST {url}/embeddings answered {r.status_code}: {r.text[:200]}"
        try:
            ok = bool(r.json()["data"][0]["embedding"])
        except (ValueError, KeyError, IndexError, TypeError):
            ok = False
        return (True, "") if ok else (False, f"POST {url}/embeddings answered without a vector: {r.text[:200]}")

    return probe


def parse_probe(home: Path, timeout_s: float = 10.0) -> Probe:
    """The parse service answers ("pong", live workers) to a ping over its authenticated connection."""

    def probe() -> tuple[bool, str]:
        from multiprocessing.connection import Client

        from mmrag.serve import discovery

        info = discovery.lookup(home, discovery.PARSE)
        if not info:
            return False, "the parse service has not announced itself (parse-service.json)"
        host, port = info["address"]
        try:
            conn = Client((host, int(port)), authkey=bytes.fromhex(info["authkey"]))
        except (OSError, EOFError) as e:
            return False, f"no connection to the parse service at {host}:{port}: {e}"
        try:
            conn.send(("ping",))
            if not conn.poll(timeout_s):
                return False, f"the parse service did not answer a ping within {timeout_s:g} s"
            reply = conn.recv()
        except (OSError, EOFError) as e:
            return False, f"the parse service dropped the connection: {e}"
        finally:
            conn.close()
        if not (isinstance(reply, tuple) and reply and reply[0] == "pong"):
            return False, f"the parse service answered a ping with {str(reply)[:120]}"
        return (True, "") if reply[1] > 0 else (False, f"the parse service has no live worker ({reply[2] or 'no reason given'})")

    return probe


def milvus_probe(uri: str, timeout_s: float = 5.0) -> Probe:
    client = {}

    def probe() -> tuple[bool, str]:
        from pymilvus import MilvusClient

        try:
            if "c" not in client:
                client["c"] = MilvusClient(uri=uri, timeout=timeout_s)
            client["c"].list_collections(timeout=timeout_s)
            return True, ""
        except Exception as e:  # noqa: BLE001 - pymilvus raises many kinds
            client.pop("c", None)
            return False, f"Milvus at {uri} does not answer list_collections: {type(e).__name__}: {str(e)[:200]}"

    return probe


_instances: dict[str, object] = {}
_instances_lock = threading.Lock()


def _instance(dagster_home: Path):
    """One Dagster instance per DAGSTER_HOME for the probes of this process (they run in threads)."""
    with _instances_lock:
        key = str(dagster_home)
        if key not in _instances:
            from dagster import DagsterInstance

            _instances[key] = DagsterInstance.from_config(key)
        return _instances[key]


def daemon_probe(dagster_home: Path, sensor_interval_s: float, started_at: Callable[[], float],
                 grace_s: float = START_GRACE_S) -> Probe:
    """Dagster's daemon heartbeats (fresh, no errors) and the `watch_folders` sensor's ticks."""

    def probe() -> tuple[bool, str]:
        inst = _instance(dagster_home)
        for kind, status in inst.get_daemon_statuses(["SENSOR", "QUEUED_RUN_COORDINATOR"]).items():
            errors = status.last_heartbeat.errors if status.last_heartbeat is not None else None
            if errors:
                return False, f"the daemon's {kind} loop reports an error: {' '.join(str(errors[0].message).split())[:300]}"
            if not status.healthy and time.time() - started_at() > grace_s:
                return False, f"the daemon's {kind} loop has no fresh heartbeat"
        tick = last_sensor_tick(inst, "watch_folders")
        late = max(3 * sensor_interval_s, 30.0)
        if tick is None:
            if time.time() - started_at() > grace_s:
                return False, (f"the watch_folders sensor has not ticked in {time.time() - started_at():.0f} s since the "
                               "daemon started (its code location may fail to load: see the daemon's log)")
            return False, "the watch_folders sensor has not ticked yet"
        age = time.time() - tick.timestamp
        if tick.status.value == "FAILURE":
            err = tick.error.message if tick.error else "no error recorded"
            return False, f"the watch_folders sensor's last tick failed: {' '.join(str(err).split())[:300]}"
        if age > late:
            return False, f"the watch_folders sensor last ticked {age:.0f} s ago (every {sensor_interval_s:g} s)"
        return True, ""

    return probe


def last_sensor_tick(instance, name: str):
    """The latest tick of the sensor called `name` (any code location), or None."""
    from dagster._core.scheduler.instigation import InstigatorType as Kind

    latest = None
    for state in instance.all_instigator_state(instigator_type=Kind.SENSOR):
        if state.instigator_name != name:
            continue
        ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1)
        if ticks and (latest is None or ticks[0].timestamp > latest.timestamp):
            latest = ticks[0]
    return latest


def runs_probe(dagster_home: Path) -> Probe:
    """A run that failed at launch (ended FAILURE without the executing process ever tagging it) since the
    latest run that started is a broken part: the sensor asks for runs that never index anything."""

    def probe() -> tuple[bool, str]:
        from dagster import DagsterRunStatus, RunsFilter

        from mmrag.orchestration.runs import PID_TAG

        inst = _instance(dagster_home)
        for run in inst.get_runs(RunsFilter(job_name="ingest_job"), limit=5):
            if run.tags.get(PID_TAG):
                return True, ""  # the latest run that started: launches work
            if run.status == DagsterRunStatus.FAILURE:
                return False, f"run {run.run_id[:8]} failed at launch: {failure_message(inst, run.run_id)}"
        return True, ""

    return probe


def failure_message(instance, run_id: str) -> str:
    from dagster import DagsterEventType

    for rec in reversed(instance.all_logs(run_id)):
        ev = rec.dagster_event
        if ev is not None and ev.event_type in (DagsterEventType.RUN_FAILURE, DagsterEventType.ENGINE_EVENT):
            msg = rec.message or ""
            err = getattr(getattr(ev, "event_specific_data", None), "error", None)
            text = f"{msg} {err.message if err else ''}".strip()
            if text:
                return " ".join(text.split())[:300]
    return "no reason recorded"
