"""The soak: `mmrag up` on the embedded defaults under load, while files come, change and go and its parts
are killed; then the whole index compared with a clean ingest of the final folder. `tests/test_soak.py`
runs a short plan, `bench/soak.py` the long one (1,000 small files and 20 office files over ~10 minutes).

One `soak(plan, work)` call:
1. the loopback model server as the chat model and VLM (`plan.latency_s` per reply, `plan.error_rate` of
   requests answered 500), `mmrag up` on a fresh data dir watching `work/docs` (sensor every
   `plan.interval_s` s);
2. a writer plays a seeded schedule over `plan.minutes`: small Markdown files created, a burst of
   `plan.burst` at once, office files (copies of the sample corpus) created, some of each edited or deleted;
3. `plan.clients` threads query the API all the while (naive and mix); every answer that is not a 200 is
   kept with its status and body (a 503 naming a restarting part is the only allowed failure);
4. a killer SIGKILLs each of `plan.kills` once at a random moment: the embedding service, the parse
   service, the daemon (`up` restarts them) and one ingest run in flight (the daemon's run monitoring
   marks it failed, the sensor asks for its files again);
5. freshness: for every `plan.probe_every`-th created file, the time from its write to its first hit
   through `POST /v1/query` scoped to it (asked by the first client between its queries);
6. memory: every part's resident set (with its children) sampled each second;
7. after the schedule, wait until the index has settled (every file on disk indexed, none stale or
   deleted, no run in flight), stop `up` with SIGINT, check that none of its processes is left, ingest
   the final folder afresh with a fault-free model server, and diff the two whole indexes
   (`crash_tools.index_state`).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import psutil
from rss_tools import RssSampler

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "tests" / "corpus" / "sample"
OFFICE = ("word_sample.docx", "word_tables.docx", "powerpoint_sample.pptx", "xlsx_01.xlsx", "multi_page.pdf",
          "wiki_duck.html", "table_06.html", "equations.docx")
BIRDS = ("heron egret bittern ibis spoonbill stork crane rail coot gallinule plover lapwing dotterel turnstone "
         "sanderling dunlin knot stint curlew godwit whimbrel snipe woodcock phalarope avocet stilt").split()


@dataclass
class Plan:
    small: int = 1000  # small Markdown files created
    office: int = 20  # office files created (copies of the sample corpus)
    minutes: float = 10.0  # the schedule's length
    burst: int = 200  # of the small files, created at once at 40 % of the schedule
    edits: float = 0.1  # share of created files edited later
    deletes: float = 0.05  # share of created files deleted later
    clients: int = 4
    kills: tuple[str, ...] = ("embed", "parse", "daemon", "run")
    latency_s: float = 0.1
    error_rate: float = 0.05
    interval_s: int = 3  # MMRAG_SENSOR_INTERVAL_S
    probe_every: int = 25  # freshness measured on every n-th created file
    settle_s: float = 1800.0  # how long the index may take to settle after the schedule
    seed: int = 1


@dataclass
class Result:
    plan: dict
    files_final: int = 0
    events: dict = field(default_factory=dict)  # what the writer did, by kind
    kills: list = field(default_factory=list)  # (part, seconds into the schedule, what happened)
    queries: dict = field(default_factory=dict)  # ok, failed by status, per second, latency p50/p95 ms
    bad_answers: list = field(default_factory=list)  # non-200 answers other than a 503 (first 20)
    freshness: dict = field(default_factory=dict)  # probes, found, p50/p95 s
    rss_peak_mb: dict = field(default_factory=dict)  # by part
    rss_growth: dict = field(default_factory=dict)  # by part: peak of the last third / peak of the middle third
    restarts: dict = field(default_factory=dict)  # by part, as `up` said
    settle_s: float = 0.0  # from the schedule's end to the settled index
    left_running: list = field(default_factory=list)
    up_exit: int | None = None
    differences: list = field(default_factory=list)
    dangling: list = field(default_factory=list)
    seconds: float = 0.0
    log: str = ""


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * (len(xs) - 1) + 0.5))]


def _schedule(plan: Plan) -> list[tuple[float, str, str]]:
    """(seconds into the schedule, action, file name), sorted: create/edit/delete."""
    rng = random.Random(plan.seed)
    span = plan.minutes * 60
    events: list[tuple[float, str, str]] = []
    burst_at = 0.4 * span
    for i in range(plan.small):
        t = burst_at if i < plan.burst else rng.uniform(0, 0.9 * span)
        events.append((t, "create", f"note_{i:05d}.md"))
    for i in range(plan.office):
        src = OFFICE[i % len(OFFICE)]
        events.append((rng.uniform(0, 0.8 * span), "create", f"office_{i:03d}_{src}"))
    created = [(t, name) for t, _, name in events]
    for t, name in rng.sample(created, int(plan.edits * len(created))):
        events.append((rng.uniform(t + 1, max(t + 2, 0.95 * span)), "edit", name))
    for t, name in rng.sample(created, int(plan.deletes * len(created))):
        events.append((rng.uniform(t + 1, max(t + 2, span)), "delete", name))
    return sorted(events)


def _content(name: str, version: int) -> bytes | None:
    """A small note's text (version 1: edited), or None for an office file (a copy of the sample)."""
    if not name.startswith("note_"):
        return None
    i = int(name[5:10])
    bird = BIRDS[i % len(BIRDS)]
    text = (f"# Field note {i}\n\nA {bird} was seen near marker soakmark{i}, counting {i % 17 + 2} birds.\n"
            if version == 0 else
            f"# Field note {i}, revised\n\nThe {bird} at soakmark{i} was recounted: {i % 13 + 5} birds at dusk.\n")
    return text.encode()


def _write(docs: Path, action: str, name: str, versions: dict[str, int]) -> None:
    path = docs / name
    if action == "delete":
        path.unlink(missing_ok=True)
        versions.pop(name, None)
        return
    if action == "edit" and name not in versions:
        return  # deleted before its edit
    version = versions.get(name, -1) + 1
    data = _content(name, version)
    tmp = docs.parent / f".{name}.part"  # written beside, then moved in: a reader never sees half a file
    if data is None:
        src = SAMPLE / name.split("_", 2)[2]
        if version:  # an edited office file: another sample document of the same kind, or the same one again
            pool = [o for o in OFFICE if o.rsplit(".", 1)[1] == src.suffix[1:] and o != src.name]
            src = SAMPLE / (pool[0] if pool else src.name)
        shutil.copy(src, tmp)
    else:
        tmp.write_bytes(data)
    os.replace(tmp, path)
    versions[name] = version


def _env(home: Path, llm_url: str, plan: Plan) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMRAG_") and k != "DAGSTER_HOME"}
    env.update(MMRAG_HOME=str(home), MMRAG_CLIP_PRETRAINED="random", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO),
               MMRAG_SENSOR_INTERVAL_S=str(plan.interval_s), MMRAG_RETRY_BACKOFF_S="2", MMRAG_LLM_URL=llm_url,
               MMRAG_LLM_MODEL="fake-llm", MMRAG_VLM_MODEL="fake-vlm")
    return env


def _settled(api: str, docs: Path) -> bool:
    """Every file on disk indexed (or skipped/failed for its content), nothing stale or deleted, per `/v1/status`."""
    st = httpx.get(f"{api}/v1/status", timeout=120).json()["sources"].get("docs")
    if st is None:
        return False
    on_disk = {p.name for p in docs.iterdir() if p.is_file()}
    recs = {f["path"]: f for f in st["files"]}
    return (set(recs) == on_disk and not st["stale"] and not st["deleted"]
            and all(f["status"] == "indexed" or f.get("failure_kind") == "content" for f in recs.values()))


def _runs_in_flight(home: Path) -> int:
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    busy = [DagsterRunStatus.QUEUED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]
    with DagsterInstance.from_config(str(home / "dagster")) as inst:
        return len(inst.get_runs(RunsFilter(statuses=busy)))


def _kill_run(home: Path, deadline: float) -> str:
    """SIGKILL the process of an ingest run in flight (waiting for one until `deadline`)."""
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    from mmrag.orchestration.runs import PID_TAG

    with DagsterInstance.from_config(str(home / "dagster")) as inst:
        while time.monotonic() < deadline:
            for run in inst.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED])):
                pid = run.tags.get(PID_TAG, "")
                if pid.isdigit():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                        return f"run {run.run_id[:8]} (pid {pid})"
                    except ProcessLookupError:
                        continue
            time.sleep(0.5)
    return "no run in flight to kill"


def _ours(home: Path) -> list[psutil.Process]:
    """Live processes whose environment names this data dir (`up`'s children, theirs, orphans included)."""
    out = []
    for p in psutil.process_iter():
        try:
            if p.pid != os.getpid() and p.environ().get("MMRAG_HOME") == str(home) and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            continue
    return out


CHILD_NEEDLE = {"embed": "embed-server", "parse": "parse-server", "daemon": "dagster-daemon"}


def _kill_part(proc: subprocess.Popen, part: str) -> str:
    for p in psutil.Process(proc.pid).children():
        try:
            if CHILD_NEEDLE[part] in " ".join(p.cmdline()):
                p.kill()  # the part's own process only, as the OOM killer would: its children are its to notice
                return f"{part} (pid {p.pid})"
        except psutil.Error:
            continue
    return f"{part}: not running"


def soak(plan: Plan, work: Path, say=print) -> Result:
    """Play `plan` against `mmrag up` in `work` (a fresh folder); see the module's docstring."""
    from crash_tools import dangling, diff, env_for, index_state, new_home
    from openai_server import Fault, FakeOpenAIServer, lightrag_aware

    from mmrag.serve.supervisor import free_port, stop_group

    t_start = time.monotonic()
    res = Result(plan=asdict(plan))
    docs, home = work / "docs", work / "home"
    docs.mkdir(parents=True)
    rng = random.Random(plan.seed + 1)
    fault_lock = threading.Lock()

    def faults(rec) -> Fault | None:
        if rec.method != "POST":
            return None
        with fault_lock:
            hit = rng.random() < plan.error_rate
        return Fault("status", 500, "injected soak fault") if hit else None

    with FakeOpenAIServer(latency_s=plan.latency_s) as llm:
        llm.responder = lightrag_aware
        llm.fault_fn = faults
        env = _env(home, llm.base_url, plan)
        ports = {"api": free_port(), "ui": free_port(), "dagster": free_port()}
        api = f"http://127.0.0.1:{ports['api']}"
        log = work / "up.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "mmrag.cli", "up", str(docs), "--api-port", str(ports["api"]),
                                     "--ui-port", str(ports["ui"]), "--dagster-port", str(ports["dagster"])],
                                    env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        rss = RssSampler(proc.pid, every_s=1.0)
        stop = threading.Event()
        threads: list[threading.Thread] = []
        lat: list[float] = []
        codes: dict[str, int] = {}
        probes: dict[str, dict] = {}
        probe_lock = threading.Lock()
        try:
            deadline = time.monotonic() + 600
            while True:
                assert proc.poll() is None, f"mmrag up exited:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"mmrag up did not start:\n{log.read_text()[-3000:]}"
                try:
                    if httpx.get(f"{api}/healthz", timeout=5).json().get("status") == "ok":
                        break
                except (httpx.HTTPError, ValueError):
                    pass
                time.sleep(1)
            say(f"soak: up ready after {time.monotonic() - t_start:.0f} s; playing {plan.minutes} min")

            def client(i: int) -> None:
                n = 0
                while not stop.is_set():
                    if i == 0:  # the first client also asks for each file being waited on (the API's limit
                        probe()  # is 4 requests in flight per key: 4 clients, not 4 + a prober)
                    q = {"question": f"How many {BIRDS[(i * 7 + n) % len(BIRDS)]} were counted?", "top_k": 5,
                         "mode": "mix" if n % 2 else "naive", "images": False}
                    t0 = time.perf_counter()
                    try:
                        r = httpx.post(f"{api}/v1/query", json=q, timeout=120)
                        key = str(r.status_code)
                        if r.status_code != 200 and (r.status_code != 503 or len(res.bad_answers) < 20):
                            res.bad_answers.append(f"{r.status_code}: {r.text[:300]}")
                    except httpx.HTTPError as e:
                        key = type(e).__name__
                        res.bad_answers.append(f"{key}: {e}")
                    with probe_lock:
                        lat.append(time.perf_counter() - t0)
                        codes[key] = codes.get(key, 0) + 1
                    n += 1

            def probe() -> None:
                with probe_lock:
                    open_ = [(k, p) for k, p in probes.items() if "hit" not in p and "gone" not in p]
                for name, p in open_:
                    try:
                        r = httpx.post(f"{api}/v1/query", json={"question": f"soakmark{p['i']} birds", "top_k": 3,
                                                                "files": [f"docs:{name}"], "images": False},
                                       timeout=120)
                        if r.status_code == 200 and r.json()["hits"]:
                            p["hit"] = time.monotonic()
                    except httpx.HTTPError:
                        pass

            threads += [threading.Thread(target=client, args=(i,), daemon=True) for i in range(plan.clients)]
            for t in threads:
                t.start()

            events = _schedule(plan)
            span = plan.minutes * 60
            kill_rng = random.Random(plan.seed + 2)
            kills = sorted((kill_rng.uniform(0.15 * span, 0.85 * span), part) for part in plan.kills)
            versions: dict[str, int] = {}
            t0 = time.monotonic()
            created = 0
            for t, action, name in events:
                while kills and kills[0][0] <= t:
                    kt, part = kills.pop(0)
                    time.sleep(max(0.0, t0 + kt - time.monotonic()))
                    what = _kill_run(home, time.monotonic() + 120) if part == "run" else _kill_part(proc, part)
                    res.kills.append((part, round(time.monotonic() - t0, 1), what))
                    say(f"soak: killed {what} at {time.monotonic() - t0:.0f} s")
                time.sleep(max(0.0, t0 + t - time.monotonic()))
                assert proc.poll() is None, f"mmrag up exited during the soak:\n{log.read_text()[-3000:]}"
                _write(docs, action, name, versions)
                res.events[action] = res.events.get(action, 0) + 1
                if action == "create" and name.startswith("note_"):
                    created += 1
                    if created % plan.probe_every == 0:
                        with probe_lock:
                            probes[name] = {"i": int(name[5:10]), "written": time.monotonic()}
                elif action == "delete" and name in probes:
                    probes[name]["gone"] = True
            for kt, part in kills:
                what = _kill_run(home, time.monotonic() + 120) if part == "run" else _kill_part(proc, part)
                res.kills.append((part, round(time.monotonic() - t0, 1), what))
            t_end = time.monotonic()
            say(f"soak: schedule played ({res.events}); waiting for the index to settle")
            deadline = t_end + plan.settle_s
            settled_twice = 0
            while settled_twice < 2:
                assert proc.poll() is None, f"mmrag up exited while settling:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, (f"the index did not settle in {plan.settle_s:.0f} s:\n"
                                                     f"{log.read_text()[-3000:]}")
                try:
                    ok = _settled(api, docs) and _runs_in_flight(home) == 0
                except (httpx.HTTPError, ValueError, KeyError):
                    ok = False
                settled_twice = settled_twice + 1 if ok else 0
                time.sleep(plan.interval_s + 2)
            res.settle_s = round(time.monotonic() - t_end, 1)
            t_q = time.monotonic() - t0
        finally:
            stop.set()
            for t in threads:  # the clients' last requests end before `up` stops
                t.join(130)
            res.rss_peak_mb = rss.result()
            res.rss_growth = rss.growth()
            try:
                children = psutil.Process(proc.pid).children(recursive=True)
            except psutil.Error:
                children = []
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    res.up_exit = proc.wait(120)
                except subprocess.TimeoutExpired:
                    stop_group(proc, 5, signal_first=False)
                    res.up_exit = None
            else:
                res.up_exit = proc.returncode
            time.sleep(1)
            left = _ours(home)
            res.left_running = [f"{p.pid} {' '.join(p.cmdline())[:120]}" for p in left]
            for p in {*children, *left}:  # never leave a stray process behind a failed soak
                try:
                    p.kill()
                except psutil.Error:
                    pass
        text = log.read_text(errors="replace")
        res.log = text[-4000:]
        for part in ("milvus", "embed", "parse", "daemon", "dagster", "api", "ui"):
            res.restarts[part] = text.count(f"mmrag up: restarting {part} ")
        ok = codes.get("200", 0)
        res.queries = {"ok": ok, "by_status": dict(sorted(codes.items())), "seconds": round(t_q, 1),
                       "per_s": round(ok / t_q, 2) if t_q else 0.0,
                       "p50_ms": round(1000 * statistics.median(lat), 1) if lat else None,
                       "p95_ms": round(1000 * _pct(lat, 0.95), 1) if lat else None}
        lags = [p["hit"] - p["written"] for p in probes.values() if "hit" in p]
        res.freshness = {"probes": sum("gone" not in p for p in probes.values()), "found": len(lags),
                         "p50_s": round(statistics.median(lags), 1) if lags else None,
                         "p95_s": round(_pct(lags, 0.95), 1) if lags else None}
        res.files_final = sum(1 for p in docs.iterdir() if p.is_file())

    # The reference: the final folder ingested once, afresh, with a model server that never fails.
    with FakeOpenAIServer() as clean_llm:
        clean_llm.responder = lightrag_aware
        clean = new_home(work / "clean")
        llm_env = {"MMRAG_LLM_URL": clean_llm.base_url, "MMRAG_LLM_MODEL": "fake-llm", "MMRAG_VLM_MODEL": "fake-vlm"}
        r = subprocess.run([sys.executable, "-m", "mmrag.cli", "ingest", str(docs), "--json"], cwd=REPO,
                           env=env_for(clean, **llm_env), capture_output=True, text=True, timeout=7200)
        assert r.returncode == 0, r.stderr[-3000:]
    got, want = index_state(home, cache=False), index_state(clean, cache=False)
    res.differences = diff(want, got)
    res.dangling = dangling(got)
    res.seconds = round(time.monotonic() - t_start, 1)
    return res
