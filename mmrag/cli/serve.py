"""The serving commands: `mmrag api`, `mmrag ui` (the chat page) and `mmrag up` (every part)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from mmrag.cli.common import EXIT_BAD_ROOT, EXIT_BUSY, source_name
from mmrag.config import Settings
from mmrag.orchestration.instance import REPO_ROOT, ensure_dagster_home


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

    from mmrag.serve import discovery
    from mmrag.serve.access import keyring
    from mmrag.serve.api import create_app

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
    discovery.announce(settings.home, discovery.API, {"url": url})
    print(f"mmrag api: {url} (POST /v1/query, GET /v1/status, POST /v1/chat/completions)", flush=True)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again: end cleanly.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        discovery.withdraw(settings.home, discovery.API)
    return 0


def cmd_embed_server(args) -> int:
    """The warm embedding service (mmrag.serve.embeddings): loads the models, then listens."""
    import uvicorn

    from mmrag.serve.embeddings import create_app

    if refused := _public_without_key(args.host):
        print(refused, file=sys.stderr)
        return EXIT_BAD_ROOT
    settings = Settings.from_env()
    print(f"mmrag embed-server: loading models, then http://{args.host}:{args.port}/v1 (POST /v1/embeddings)",
          flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="warning", access_log=False)
    except KeyboardInterrupt:
        pass
    return 0


def cmd_parse_server(args) -> int:
    """The warm parse service (mmrag.parsing.service): supervised parse workers that outlive runs."""
    from mmrag.parsing.service import serve_main
    from mmrag.parsing.worker import WorkerConfig
    from mmrag.sources.blobs import BlobStore

    settings = Settings.from_env()
    config = WorkerConfig.from_settings(settings, BlobStore(settings.blobs_dir).root)
    print("mmrag parse-server: warming a parse worker", flush=True)
    from mmrag.parsing.service import default_workers

    return serve_main(config, settings.home, settings.state_path, port=args.port, workers=args.workers or default_workers(),
                      say=lambda m: print(m, flush=True))


def cmd_ui(args) -> int:
    """The chat page (Streamlit), on this machine's index. Streamlit replaces this process (exec), so
    a signal to `mmrag ui` stops the server, and with it its hold on a Milvus Lite index."""
    import os

    app = Path(__file__).resolve().parents[1] / "serve" / "chat.py"
    cmd = [sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(args.port),
           "--server.address", args.host, "--server.headless", "true", "--browser.gatherUsageStats", "false",
           # no file watcher over the tree, no dev-mode server or deploy button, uncaught errors by type only
           "--server.fileWatcherType", "none", "--global.developmentMode", "false",
           "--client.toolbarMode", "viewer", "--client.showErrorDetails", "type"]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, cmd)
    return 0  # not reached


def _probes(args, settings: Settings, env: dict, embed: dict | None, dagster_home: Path, sup) -> dict:
    """What each part of `up` must answer to count as working (`mmrag.serve.health`)."""
    from mmrag.serve import health
    from schedules.watch import sensor_interval_s

    host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    names = {c.name for c in sup.children}
    probes = {}
    if "milvus" in names:
        probes["milvus"] = health.milvus_probe(env["MMRAG_MILVUS_URI"])
    if "embed" in names and embed:
        probes["embed"] = health.embed_probe(embed["url"], embed["text_model"])
    if "parse" in names:
        probes["parse"] = health.parse_probe(settings.home)
    probes["daemon"] = health.daemon_probe(dagster_home, sensor_interval_s(), lambda: sup.started_at("daemon"))
    probes["runs"] = health.runs_probe(dagster_home)
    probes["dagster"] = health.webserver_probe(f"http://{host}:{args.dagster_port}")
    probes["api"] = health.http_probe(f"http://{host}:{args.api_port}/healthz")
    probes["ui"] = health.http_probe(f"http://{host}:{args.ui_port}/_stcore/health")
    return probes


def cmd_up(args) -> int:
    """Milvus server, Dagster daemon + webserver, query API and chat page, supervised (mmrag.serve.supervisor)."""
    from mmrag.manifest import Manifest
    from mmrag.serve import discovery, health, milvus_lite_server
    from mmrag.serve.supervisor import (
        Child,
        Supervisor,
        free_port,
        port_open,
        run_children,
        venv_tool,
    )

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
        manifest.set_source(source_name(root), str(root))
    if not manifest.sources() and not os.environ.get("MMRAG_WATCH"):
        print("mmrag up: no folder to watch: give ROOT, or ingest one first, or set MMRAG_WATCH", file=sys.stderr)
        return EXIT_BAD_ROOT
    env = {**os.environ, "DAGSTER_HOME": str(home), "MMRAG_HOME": str(settings.home.resolve()),
           "MMRAG_AUTOMATION": "on"}
    children = []
    if settings.is_milvus_lite:
        port = args.milvus_port or free_port()
        data_dir = settings.resolved_milvus_uri
        # an ingest holding the data dir finishes first; then every process uses up's server (discovery)
        from mmrag.index import lite_lock

        try:
            lite_lock.hold(data_dir, settings.slot_wait_s, say=lambda m: print(f"mmrag up: {m}", flush=True))
        except lite_lock.IndexBusyError as e:
            print(f"mmrag up: {e}", file=sys.stderr)
            return EXIT_BUSY
        children.append(Child("milvus", milvus_lite_server.command(data_dir, port), ready_port=port,
                              listens=f"grpc://127.0.0.1:{port} (Milvus Lite server on {data_dir})"))
        env["MMRAG_MILVUS_URI"] = f"http://127.0.0.1:{port}"
    busy = [p for p in (args.api_port, args.ui_port, args.dagster_port) if port_open(p)]
    if busy:
        print(f"mmrag up: port {busy[0]} is in use: pick another with --api-port/--ui-port/--dagster-port",
              file=sys.stderr)
        return EXIT_BAD_ROOT
    workspace = str(REPO_ROOT / "workspace.yaml")
    me = [sys.executable, "-m", "mmrag.cli"]
    embed = None
    if not args.no_embed_service and not os.environ.get("MMRAG_EMBED_SERVICE_URL"):
        # one warm copy of the embedding models; runs, the API, the chat page and eval are its clients
        from mmrag.serve.embeddings import clip_name

        port = free_port()
        children.append(Child("embed", [*me, "embed-server", "--port", str(port)], ready_port=port, tier=1,
                              listens=f"http://127.0.0.1:{port}/v1 (embedding service: text model and CLIP)"))
        env["MMRAG_EMBED_SERVICE_URL"] = f"http://127.0.0.1:{port}/v1"
        embed = {"url": env["MMRAG_EMBED_SERVICE_URL"], "clip": clip_name(settings),
                 "text_model": settings.text_embed_model if settings.text_embed_backend == "sentence-transformers" else ""}
    if not args.no_parse_service and settings.parse_service:
        # one warm parse worker (Docling loaded) for every run; a run falls back to its own
        port = free_port()
        children.append(Child("parse", [*me, "parse-server", "--port", str(port)], ready_port=port, tier=1,
                              listens=f"127.0.0.1:{port} (parse service: supervised Docling/Whisper workers)"))
    children += [
        Child("daemon", [venv_tool("dagster-daemon"), "run", "-w", workspace], tier=2),
        Child("dagster", [venv_tool("dagster-webserver"), "-w", workspace, "-h", args.host, "-p", str(args.dagster_port)],
              ready_port=args.dagster_port, listens=f"http://{args.host}:{args.dagster_port} (Dagster UI)", tier=2),
        Child("api", [*me, "api", "--host", args.host, "--port", str(args.api_port)], ready_port=args.api_port,
              listens=f"http://{args.host}:{args.api_port}/v1 (query API)", tier=3),
        Child("ui", [*me, "ui", "--host", args.host, "--port", str(args.ui_port)], ready_port=args.ui_port,
              listens=f"http://{args.host}:{args.ui_port} (chat page)", tier=3),
    ]
    print(f"mmrag up: data dir {settings.home.resolve()}, watching {', '.join(sorted(manifest.sources()))}",
          flush=True)
    say = lambda m: print(m, flush=True)  # noqa: E731
    board = health.HealthBoard(settings.home, [c.name for c in children] + ["runs"], say,
                               logs={c.name: settings.home / "logs" / f"{c.name}.log" for c in children})
    sup = Supervisor(children, env, settings.home / "logs", say=say, board=board)
    monitor = health.HealthMonitor(board, _probes(args, settings, env, embed, home, sup), sup.alive, sup.started_at)
    if settings.is_milvus_lite:  # other processes on this data dir find the server (Settings.from_env)
        sup.on_started["milvus"] = lambda child: discovery.announce(settings.home, discovery.MILVUS,
                                                                    {"uri": env["MMRAG_MILVUS_URI"]}, pid=child.proc.pid)
    if embed:  # `mmrag ingest`, `query` and `eval` in other shells use it too (Settings.from_env)
        sup.on_started["embed"] = lambda child: discovery.announce(settings.home, discovery.EMBED, embed,
                                                                   pid=child.proc.pid)
    try:
        return run_children(sup, manifest, monitor=monitor)
    finally:
        discovery.withdraw(settings.home, health.HEALTH, pid=0)
        discovery.withdraw(settings.home, discovery.MILVUS, pid=0)
        discovery.withdraw(settings.home, discovery.EMBED, pid=0)
        discovery.withdraw(settings.home, discovery.PARSE, pid=0)
