"""`mmrag`: ingest a folder through the Dagster assets, query the index, show its status.

Runs go through a real Dagster instance (DAGSTER_HOME, default $MMRAG_HOME/dagster with the
repository's dagster.yaml), so `mmrag dev` / `dagster dev` shows every run the CLI made.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from mmrag.config import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
EXIT_FAILED_FILES, EXIT_BAD_ROOT, EXIT_BUSY, EXIT_ANSWER_FAILED = 1, 2, 3, 4


def ensure_dagster_home(settings: Settings) -> Path:
    """Point DAGSTER_HOME at $MMRAG_HOME/dagster (unless set) and write its dagster.yaml there: the
    project's, with Postgres storage when MMRAG_DAGSTER_PG_URL is set (`mmrag.instance`)."""
    from mmrag.instance import PG_URL_VAR, set_driver, uses_pg_url, write_instance_yaml

    set_driver(os.environ)
    if os.environ.get("DAGSTER_HOME"):
        home = Path(os.environ["DAGSTER_HOME"])
    else:
        home = (settings.home / "dagster").resolve()
        home.mkdir(parents=True, exist_ok=True)
        write_instance_yaml(home, REPO_ROOT / "dagster.yaml")
        os.environ["DAGSTER_HOME"] = str(home)
    if os.environ.get(PG_URL_VAR) and not uses_pg_url(home):
        print(f"mmrag: {PG_URL_VAR} is set but {home / 'dagster.yaml'} (not written by mmrag) does not use it: "
              "the instance keeps the storage that file names (delete it to have mmrag write it)", file=sys.stderr)
    return home


def _instance(settings: Settings):
    from dagster import DagsterInstance

    ensure_dagster_home(settings)
    return DagsterInstance.get()


def _source_name(root: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", root.name) or "root"


def _quiet_run_config() -> dict:
    return {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def _say(args, msg: str) -> None:
    # With --json, stdout carries only the JSON object; progress goes to stderr.
    print(msg, file=sys.stderr if args.json else sys.stdout, flush=True)


def sync_folder(settings: Settings, root: Path, source: str, say=lambda msg: None, retry_failed: bool = False):
    """Bring the index in line with `root`: clean-up run for deleted files, ingest runs (ranges of
    partitions) for new, changed and stale ones. Returns (scan, run errors, files removed); the scan's
    `error` is set (and nothing changed) when the root is missing or unreadable.

    First, runs of this instance whose process died are marked failed and their pool slots freed;
    each run then starts once the index pool has a free slot (bounded wait, `MMRAG_SLOT_WAIT_S`)."""
    from mmrag.runs import reap_dead_runs
    from mmrag.sync import plan_sync, scan_root

    scan = scan_root(root, source)
    if scan.error:
        return scan, [], 0
    instance = _instance(settings)
    reap_dead_runs(instance, say)

    from mmrag.state import Manifest

    manifest = Manifest(settings.state_path)
    manifest.set_source(source, str(root))
    records = {r.file_key: r for r in manifest.all(source)}
    partitions = set(instance.get_dynamic_partitions("source_files"))
    plan = plan_sync(scan, records, partitions, fingerprint=settings.fingerprint(), retry_failed=retry_failed)
    if plan.to_run:
        _start_parse_worker(settings, [scan.files[k][0] for k in plan.to_run])
    try:
        return _apply_plan(settings, instance, scan, plan, partitions, manifest, say)
    finally:
        from mmrag.parsing.worker import discard_spare

        discard_spare()


def _start_parse_worker(settings: Settings, rel_paths: list[str]) -> None:
    """Start the run's parse worker now, loading the parsers these files need while the definitions
    import and Dagster sets the run up (50 office files: some 6 s of CPU that the parse step waited
    for). The parse step adopts it; a failure here only means the step starts its own."""
    from mmrag.blobs import BlobStore
    from mmrag.filetypes import kind_by_name
    from mmrag.parsing.worker import WorkerConfig, start_spare

    try:
        kinds = sorted({kind_by_name(rel) for rel in rel_paths} - {"unknown"})
        start_spare(WorkerConfig.from_settings(settings, BlobStore(settings.blobs_dir).root), kinds)
    except Exception as e:  # noqa: BLE001
        logging.getLogger(__name__).debug("no parse worker ahead of the run: %s", e)


def _apply_plan(settings: Settings, instance, scan, plan, partitions: set[str], manifest, say):
    """sync_folder's runs: the clean-up, then the ingest ranges."""
    from mmrag.definitions import defs
    from mmrag.runs import owner_tags, wait_for_pool
    from mmrag.sync import contiguous_ranges, range_tags

    for key, (size, mtime) in plan.touched.items():
        manifest.update(key, size=size, mtime=mtime)
    say(f"{scan.source}: {len(scan.files)} files — {len(plan.new)} new, {len(plan.changed)} changed, "
        f"{len(plan.stale)} stale, {len(plan.deleted)} deleted, {len(plan.unchanged)} unchanged")
    run_errors: list[tuple[list[str], str]] = []
    removed = 0

    def pool_free(what: str) -> str | None:
        """Wait for the index pool; the error, if it stayed busy."""
        try:
            wait_for_pool(instance, "mmrag_index", settings.slot_wait_s, say)
        except TimeoutError as e:
            say(f"  {what}: {e}")
            return f"TimeoutError: {e}"
        return None

    if plan.deleted and (err := pool_free("clean-up")):
        run_errors.append((plan.deleted, err))
    elif plan.deleted:
        job = defs.resolve_job_def("cleanup_job")
        res = job.execute_in_process(
            instance=instance, raise_on_error=False, tags={"mmrag/launched-by": "cli", **owner_tags()},
            run_config={**_quiet_run_config(),
                        "ops": {"remove_deleted_files": {"config": {"file_keys": plan.deleted}}}})
        if res.success:
            removed = len(plan.deleted)
            for key in plan.deleted:
                if key in partitions:
                    instance.delete_dynamic_partition("source_files", key)
        else:
            run_errors.append((plan.deleted, _run_error(res)))
    if plan.new:
        instance.add_dynamic_partitions("source_files", plan.new)
    ordered = instance.get_dynamic_partitions("source_files")
    job = defs.resolve_job_def("ingest_job")
    for start, end in contiguous_ranges(plan.to_run, ordered):
        keys = ordered[ordered.index(start): ordered.index(end) + 1]
        say(f"  indexing {len(keys)} files ({start} … {end})")
        if err := pool_free("indexing"):
            run_errors.append((keys, err))
            continue
        res = job.execute_in_process(instance=instance, raise_on_error=False, run_config=_quiet_run_config(),
                                     tags={**range_tags(start, end), "mmrag/launched-by": "cli", **owner_tags()})
        if not res.success:
            run_errors.append((keys, _run_error(res)))
    return scan, run_errors, removed


def cmd_ingest(args) -> int:
    settings = Settings.from_env()
    root = Path(args.root).expanduser().resolve()
    source = args.source or _source_name(root)
    scan, run_errors, removed = sync_folder(settings, root, source, lambda msg: _say(args, msg),
                                            retry_failed=args.retry_failed)
    if scan.error:
        print(f"mmrag: {scan.error}; nothing was changed", file=sys.stderr)
        return EXIT_BAD_ROOT
    return _report(args, settings, source, scan, run_errors, removed)


def _run_error(result) -> str:
    for ev in result.all_events:
        if ev.is_failure and ev.event_specific_data is not None and getattr(ev.event_specific_data, "error", None):
            err = ev.event_specific_data.error
            return f"{err.cls_name}: {err.message.strip()}"
    return "the run failed"


def _index_counts(settings: Settings) -> dict:
    from mmrag.milvus_store import IMAGE, TEXT, MilvusStore

    store = MilvusStore(settings.resolved_milvus_uri, settings.milvus_token, settings.milvus_db,
                        settings.collection_prefix)
    from mmrag.lightrag_runtime import graph_counts

    nodes, edges = graph_counts(settings.graph_dir)
    return {"text_rows": store.count(TEXT), "image_rows": store.count(IMAGE), "graph_nodes": nodes, "graph_edges": edges}


def _report(args, settings, source, scan, run_errors, removed: int = 0) -> int:
    from mmrag.state import Manifest

    manifest = Manifest(settings.state_path)
    recs = {r.file_key: r for r in manifest.all(source)}
    failed_by_run = {k: err for keys, err in run_errors for k in keys}
    indexed, skipped, failed = 0, [], []
    for key, (rel, _, _) in sorted(scan.files.items()):
        rec = recs.get(key)
        if key in failed_by_run:
            failed.append({"path": rel, "error": failed_by_run[key]})
        elif rec is None:
            failed.append({"path": rel, "error": "not indexed (no record)"})
        elif rec.status in ("indexed", "partial"):  # partial: indexed, some descriptions extractive
            indexed += 1
        elif rec.status == "skipped":
            skipped.append({"path": rel, "reason": rec.reason})
        else:
            failed.append({"path": rel, "error": rec.reason or rec.status})
    for rel, reason in scan.ignored:
        skipped.append({"path": rel, "reason": reason})
    out = {"files": len(scan.files) + len(scan.ignored), "indexed": indexed, "skipped": skipped, "failed": failed,
           "deleted": removed, **_index_counts(settings)}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"indexed {indexed}/{out['files']} files; {len(skipped)} skipped, {len(failed)} failed"
              + (f"; {removed} deleted files removed from the index" if removed else ""))
        for s in skipped:
            print(f"  skipped {s['path']}: {s['reason']}")
        for f in failed:
            print(f"  FAILED  {f['path']}: {f['error']}")
        print(f"index: {out['text_rows']} text rows, {out['image_rows']} image rows, "
              f"graph {out['graph_nodes']} nodes / {out['graph_edges']} edges")
    return EXIT_FAILED_FILES if failed else 0


def cmd_query(args) -> int:
    """Through the running query server when there is one (no model load; the same JSON), else in
    this process."""
    from mmrag.answer import where
    from mmrag.service import QueryError, QueryService, running_server

    settings = Settings.from_env()
    req = {"question": args.text, "top_k": args.top_k, "mode": args.mode, "sources": args.source,
           "files": args.file, "modalities": args.modality, "answer": args.answer, "images": not args.no_images}
    out = None
    if url := running_server(settings):
        out = _query_server(url, req)
        if isinstance(out, int):
            return out
    if out is None:
        try:
            out = QueryService(settings).query(req.pop("question"), **req)
        except QueryError as e:
            print(f"mmrag: {e}", file=sys.stderr)
            return EXIT_BAD_ROOT
    hits = out["hits"]
    code = EXIT_ANSWER_FAILED if out["answer_status"] == "error" else 0
    if args.json:
        print(json.dumps(out, indent=2, default=str))
        return code
    if out["answer_status"] is not None:
        print(out["answer"] if out["answer_status"] != "no_llm" else "No LLM is configured (MMRAG_LLM_URL): showing what was retrieved.")
        if out["citations"]:
            print("\nSources:")
            for c in out["citations"]:
                h = hits[c["hit"]]
                print(f"  [{c['n']}] {h['source']}:{h['file']} {where(h)}" + (f"  {h['image_path']}" if h.get("image_path") else ""))
        print()
    if not hits:
        print("no hits")
    for i, h in enumerate(hits, 1):
        text = " ".join(h["text"].split())[:160]
        frame = f"\n    image: {h['image_path']}" if h.get("image_path") else ""
        print(f"{i:2d}. [{h['score']:.3f}] {h['source']}:{h['file']} {where(h)} ({h['modality']})\n    {text}{frame}")
    if out["graph_context"] and not args.answer:
        print(f"\ngraph context ({args.mode}): {len(out['graph_context'])} characters (--json shows it)")
    if out["answer_status"] == "error":
        print(f"mmrag: {out['answer']}", file=sys.stderr)
    return code


def _query_server(url: str, req: dict) -> dict | int | None:
    """POST the query to the server: its JSON, an exit code for a refusal, or None when it cannot be
    reached (the caller then answers in-process)."""
    import httpx

    key = os.environ.get("MMRAG_API_KEY", "")
    try:
        r = httpx.post(f"{url}/v1/query", json={k: v for k, v in req.items() if v is not None},
                       headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=600)
    except httpx.TransportError:
        return None
    if r.status_code == 200:
        return r.json()
    try:
        msg = r.json()["error"]["message"]
    except Exception:  # noqa: BLE001 - not our server's error shape
        msg = r.text[:300]
    print(f"mmrag: the query server at {url} answered {r.status_code}: {msg}", file=sys.stderr)
    return EXIT_BUSY if r.status_code == 503 else EXIT_BAD_ROOT


def _public_without_key(host: str) -> str:
    """The refusal to serve the index on a non-loopback address without MMRAG_API_KEY ('' = fine)."""
    import ipaddress

    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback or os.environ.get("MMRAG_API_KEY") or os.environ.get("MMRAG_API_KEYS"):
        return ""
    return (f"mmrag: refusing to serve the index on {host} without MMRAG_API_KEY or MMRAG_API_KEYS: anyone who can "
            "reach that address could read it. Set one (clients send Authorization: Bearer <key>) or bind 127.0.0.1.")


def cmd_api(args) -> int:
    """The query API (uvicorn, one process): models load once; `mmrag query` finds it."""
    import uvicorn

    from mmrag.api import create_app
    from mmrag.service import announce, withdraw

    from mmrag.access import keyring

    if refused := _public_without_key(args.host):
        print(refused, file=sys.stderr)
        return EXIT_BAD_ROOT
    try:
        keys = keyring()
    except ValueError as e:
        print(f"mmrag: {e}", file=sys.stderr)
        return EXIT_BAD_ROOT
    settings = Settings.from_env()
    app = create_app(settings, keys=keys)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    url = f"http://{shown}:{args.port}"
    announce(settings, url)
    print(f"mmrag api: {url} (POST /v1/query, GET /v1/status, POST /v1/chat/completions)", flush=True)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again: end cleanly.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        withdraw(settings)
    return 0


def cmd_eval(args) -> int:
    from mmrag.evaluation import evaluate, plot_recall, recall_table
    from mmrag.llm import LLMClient

    settings = Settings.from_env()
    folder = Path(args.dir).expanduser().resolve()
    docs = folder / "documents"
    if not (folder / "samples.jsonl").is_file() or not docs.is_dir():
        print(f"mmrag: {folder} needs documents/ and samples.jsonl (MMLongBench-Doc layout)", file=sys.stderr)
        return EXIT_BAD_ROOT
    source = args.source or f"eval-{_source_name(folder)}"
    scan, run_errors, _ = sync_folder(settings, docs, source, lambda msg: _say(args, msg))
    if run_errors:
        print(f"mmrag: indexing {docs} failed: {run_errors[0][1]}", file=sys.stderr)
        return EXIT_FAILED_FILES
    res = evaluate(settings, folder, source, text_search=args.text_search, limit=args.limit,
                   llm=LLMClient.from_settings(settings))
    plot = plot_recall(res, Path(args.plot) if args.plot else settings.home / "eval" / f"{source}-recall.png")
    res["plot"] = str(plot)
    if args.json:
        print(json.dumps(res, indent=2, default=str))
        return 0
    print(f"{res['questions']} answerable questions over {res['documents']} documents ({args.text_search} text search)")
    print(recall_table(res))
    na = res["not_answerable"]
    print(f"not answerable: {na['n']} questions" + (f", {na['recognised']} recognised by the LLM" if na["recognised"] is not None else
                                                    f" ({na['note']})"))
    print(f"plot: {plot}")
    return 0


def cmd_gc(args) -> int:
    from mmrag.gc import collect_garbage

    res = collect_garbage(Settings.from_env(), grace_s=args.grace_s, dry_run=args.dry_run)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        verb = "would remove" if args.dry_run else "removed"
        print(f"blobs: {verb} {res['removed']} ({res['freed_bytes'] / 1e6:.1f} MB), kept {res['kept']}")
    return 0


def cmd_ui(args) -> int:
    """The chat page (Streamlit), on this machine's index. Streamlit replaces this process (exec), so
    a signal to `mmrag ui` stops the server, and with it its hold on a Milvus Lite index."""
    import os

    app = Path(__file__).with_name("ui_app.py")
    cmd = [sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(args.port),
           "--server.address", args.host, "--server.headless", "true", "--browser.gatherUsageStats", "false",
           # no file watcher over the tree, no dev-mode server or deploy button, uncaught errors by type only
           "--server.fileWatcherType", "none", "--global.developmentMode", "false",
           "--client.toolbarMode", "viewer", "--client.showErrorDetails", "type"]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, cmd)
    return 0  # not reached


def cmd_status(args) -> int:
    from mmrag.service import status_json

    out = status_json(Settings.from_env())
    sources = out["sources"]
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    if not sources:
        print("nothing indexed yet: mmrag ingest ROOT")
    for name, s in sources.items():
        print(f"{name} ({s['root']}): {len(s['files'])} files, {s['text_rows']} text rows, {s['image_rows']} image rows")
        for f in s["files"]:
            print(f"  {_status_word(f):20s} {f['text_rows']:5d} {f['image_rows']:3d}  {f['path']}"
                  + (f"  — {f['reason'][:100]}" if f["reason"] and f["status"] != "indexed" else ""))
        if s["stale"] or s["deleted"]:
            print(f"  stale: {', '.join(s['stale']) or '-'}; deleted: {', '.join(s['deleted']) or '-'}")
    return 0


def cmd_up(args) -> int:
    """Milvus server, Dagster daemon + webserver, query API and chat page, supervised (mmrag.up)."""
    from mmrag.config import LITE_SERVER
    from mmrag.runs import owner_tags
    from mmrag.state import Manifest
    from mmrag.up import Child, Supervisor, free_port, port_open, run_children, venv_tool

    if refused := _public_without_key(args.host):
        print(refused, file=sys.stderr)
        return EXIT_BAD_ROOT
    settings = Settings.from_env()
    home = ensure_dagster_home(settings)
    manifest = Manifest(settings.state_path)
    for raw in args.roots:
        root = Path(raw).expanduser().resolve()
        if not root.is_dir():
            print(f"mmrag up: {root} is not a folder", file=sys.stderr)
            return EXIT_BAD_ROOT
        manifest.set_source(_source_name(root), str(root))
    if not manifest.sources() and not os.environ.get("MMRAG_WATCH"):
        print("mmrag up: no folder to watch: give ROOT, or ingest one first, or set MMRAG_WATCH", file=sys.stderr)
        return EXIT_BAD_ROOT
    env = {**os.environ, "DAGSTER_HOME": str(home), "MMRAG_HOME": str(settings.home.resolve()),
           "MMRAG_AUTOMATION": "on"}
    children = []
    if settings.is_milvus_lite:
        port = args.milvus_port or free_port()
        data_dir = settings.resolved_milvus_uri
        children.append(Child("milvus", [venv_tool("milvus-lite"), "server", "--data-dir", data_dir,
                                         "--host", "127.0.0.1", "--port", str(port)], ready_port=port,
                              listens=f"grpc://127.0.0.1:{port} (Milvus Lite server on {data_dir})"))
        env["MMRAG_MILVUS_URI"] = f"http://127.0.0.1:{port}"
    busy = [p for p in (args.api_port, args.ui_port, args.dagster_port) if port_open(p)]
    if busy:
        print(f"mmrag up: port {busy[0]} is in use: pick another with --api-port/--ui-port/--dagster-port",
              file=sys.stderr)
        return EXIT_BAD_ROOT
    workspace = str(REPO_ROOT / "workspace.yaml")
    me = [sys.executable, "-m", "mmrag.cli"]
    children += [
        Child("daemon", [venv_tool("dagster-daemon"), "run", "-w", workspace]),
        Child("dagster", [venv_tool("dagster-webserver"), "-w", workspace, "-h", args.host, "-p", str(args.dagster_port)],
              ready_port=args.dagster_port, listens=f"http://{args.host}:{args.dagster_port} (Dagster UI)"),
        Child("api", [*me, "api", "--host", args.host, "--port", str(args.api_port)], ready_port=args.api_port,
              listens=f"http://{args.host}:{args.api_port}/v1 (query API)"),
        Child("ui", [*me, "ui", "--host", args.host, "--port", str(args.ui_port)], ready_port=args.ui_port,
              listens=f"http://{args.host}:{args.ui_port} (chat page)"),
    ]
    print(f"mmrag up: data dir {settings.home.resolve()}, watching {', '.join(sorted(manifest.sources()))}",
          flush=True)
    sup = Supervisor(children, env, settings.home / "logs", say=lambda m: print(m, flush=True))
    if settings.is_milvus_lite:  # other processes on this data dir find the server (Settings.from_env)
        sup.on_started["milvus"] = lambda child: _write_json(settings.home / LITE_SERVER,
                                                             {"uri": env["MMRAG_MILVUS_URI"], **owner_tags(child.proc.pid)})
    try:
        return run_children(sup, manifest)
    finally:
        (settings.home / LITE_SERVER).unlink(missing_ok=True)


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def _status_word(f: dict) -> str:
    """`failed (content)`, `failed (retry 14:05)`, `partial (retry due)`, or the status itself."""
    import time

    if f["status"] not in ("failed", "partial"):
        return f["status"]
    if f["failure_kind"] == "content":
        return f"{f['status']} (content)"
    at = f.get("retry_at")
    when = "due" if not at or at <= time.time() else time.strftime("%H:%M", time.localtime(at))
    return f"{f['status']} (retry {when})"


def cmd_dev(args) -> int:
    """`dagster dev` on this project with the CLI's DAGSTER_HOME, so its runs show up."""
    settings = Settings.from_env()
    ensure_dagster_home(settings)
    local = Path(sys.executable).parent / "dagster"  # the venv's, even when the venv is not on PATH
    cmd = [str(local) if local.exists() else "dagster", "dev", "-w", str(REPO_ROOT / "workspace.yaml"),
           "-p", str(args.port)]
    return subprocess.call(cmd, cwd=REPO_ROOT)


def _limit_malloc_arenas(n: int = 2) -> None:
    """glibc gives each thread pool its own malloc arena; torch, gRPC (Milvus Lite) and LightRAG's
    threads then hold hundreds of MB of freed memory. Two arenas keep peak RSS lower (Linux only)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-8, n)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    _limit_malloc_arenas()
    p = argparse.ArgumentParser(prog="mmrag", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pi = sub.add_parser("ingest", help="sync a folder into the index (add new, re-index stale, delete gone)")
    pi.add_argument("root")
    pi.add_argument("--source", help="source name (default: the folder's name)")
    pi.add_argument("--retry-failed", action="store_true",
                    help="also redo files that failed (for reasons tied to their content, or transiently before "
                         "their backoff has passed)")
    pi.add_argument("--json", action="store_true")
    from mmrag.query import MODALITIES, MODES

    pq = sub.add_parser("query", help="top-k hits from the index (and graph context, an answer)")
    pq.add_argument("text")
    pq.add_argument("--top-k", type=int, default=5)
    pq.add_argument("--mode", choices=MODES, default="naive",
                    help="naive = Milvus hits only; local/global/hybrid/mix add LightRAG's graph context")
    pq.add_argument("--answer", action="store_true", help="write an answer with the configured LLM/VLM, citing [n]")
    pq.add_argument("--source", action="append", help="only this source (repeatable)")
    pq.add_argument("--file", action="append", help="only this file: rel/path or source:rel/path (repeatable)")
    pq.add_argument("--modality", action="append", choices=MODALITIES, help="only this modality (repeatable)")
    pq.add_argument("--no-images", action="store_true", help="skip the CLIP image search")
    pq.add_argument("--json", action="store_true")
    ps = sub.add_parser("status", help="rows per source and file; stale files")
    ps.add_argument("--json", action="store_true")
    pd = sub.add_parser("dev", help="open the Dagster UI on this project")
    pd.add_argument("--port", type=int, default=3000)
    pe = sub.add_parser("eval", help="page recall@1/5/10 on an MMLongBench-Doc-style folder (documents/ + samples.jsonl)")
    pe.add_argument("dir")
    pe.add_argument("--source", help="source name for the documents (default: eval-<folder name>)")
    pe.add_argument("--text-search", choices=("hybrid", "dense", "bm25"), default="hybrid")
    pe.add_argument("--limit", type=int, help="first N samples only")
    pe.add_argument("--plot", help="PNG path for the recall@k plot (default: $MMRAG_HOME/eval/<source>-recall.png)")
    pe.add_argument("--json", action="store_true")
    pg = sub.add_parser("gc", help="delete blobs (old file versions, their figures and frames) nothing refers to")
    pg.add_argument("--dry-run", action="store_true", help="count only")
    pg.add_argument("--grace-s", type=float, default=3600.0,
                    help="keep blobs written or reused this recently (a run in flight holds some; default 1 h)")
    pg.add_argument("--json", action="store_true")
    pa = sub.add_parser("api", help="the query API over HTTP (POST /v1/query, /v1/chat/completions, GET /v1/status)")
    pa.add_argument("--host", default="127.0.0.1", help="a non-loopback address needs MMRAG_API_KEY")
    pa.add_argument("--port", type=int, default=8000)
    pup = sub.add_parser("up", help="run the service: Milvus server, Dagster daemon + UI (sensor, schedule), "
                                    "query API, chat page")
    pup.add_argument("roots", nargs="*", metavar="ROOT", help="folders to watch (added to those already ingested)")
    pup.add_argument("--host", default="127.0.0.1", help="a non-loopback address needs MMRAG_API_KEY")
    pup.add_argument("--api-port", type=int, default=8000)
    pup.add_argument("--ui-port", type=int, default=8501)
    pup.add_argument("--dagster-port", type=int, default=3000)
    pup.add_argument("--milvus-port", type=int, default=0, help="default: a free port")
    pu = sub.add_parser("ui", help="the chat page (Streamlit): ask, see the answer, cited chunks, images, frames")
    pu.add_argument("--port", type=int, default=8501)
    pu.add_argument("--host", default="127.0.0.1")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("lightrag", "nano-vectordb", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from mmrag.milvus_store import IndexBusyError
    from mmrag.runs import skip_exit_collection

    skip_exit_collection()
    try:
        return {"ingest": cmd_ingest, "query": cmd_query, "status": cmd_status, "dev": cmd_dev,
                "eval": cmd_eval, "gc": cmd_gc, "ui": cmd_ui, "api": cmd_api, "up": cmd_up}[args.cmd](args)
    except IndexBusyError as e:
        print(f"mmrag: {e}", file=sys.stderr)
        return EXIT_BUSY


if __name__ == "__main__":
    sys.exit(main())
