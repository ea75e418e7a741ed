"""The `mmrag` command: its parser and dispatch to the commands' modules."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from mmrag.cli.common import EXIT_BUSY


def _limit_malloc_arenas(n: int = 2) -> None:
    """glibc gives each thread pool its own malloc arena; torch, gRPC (Milvus Lite) and LightRAG's
    threads then hold hundreds of MB of freed memory. Two arenas keep peak RSS lower (Linux only)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-8, n)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def stoppable_by_signals() -> None:
    """A command started in the background by a script (`mmrag ingest DIR &` in a shell without job
    control, some cron and CI runners) inherits SIGINT ignored. Dagster maps SIGTERM onto SIGINT's
    handler whenever it runs a job, so SIGTERM ended up ignored too (measured: `kill PID` did nothing
    after the first run, and every process the command started ignored it as well). An ignored SIGINT
    gets Python's default handler back: SIGINT and SIGTERM stop the command."""
    try:
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:  # not the main thread (embedded in another program): its handlers are its own
        pass


def main(argv: list[str] | None = None) -> int:
    _limit_malloc_arenas()
    stoppable_by_signals()
    p = argparse.ArgumentParser(prog="mmrag", description="mmrag: a multimodal RAG index of a folder, kept in sync by Dagster")
    sub = p.add_subparsers(dest="cmd", required=True)
    pi = sub.add_parser("ingest", help="sync a folder into the index (add new, re-index stale, delete gone)")
    pi.add_argument("root")
    pi.add_argument("--source", help="source name (default: the folder's name)")
    pi.add_argument("--retry-failed", action="store_true",
                    help="also redo files that failed (for reasons tied to their content, or transiently before "
                         "their backoff has passed)")
    pi.add_argument("--json", action="store_true")
    from mmrag.retrieval.query import MODALITIES, MODES

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
    pc = sub.add_parser("check", help="audit the index: folders, manifest, Milvus, graph, blobs and stage outputs "
                                      "compared, every difference named (--repair fixes them)")
    pc.add_argument("--source", action="append", help="only this source (repeatable)")
    pc.add_argument("--repair", action="store_true", help="delete orphans, index again what differs, then check again")
    pc.add_argument("--grace-s", type=float, default=3600.0,
                    help="blobs nothing names count as orphans after this age (runs in flight hold fresh ones)")
    pc.add_argument("--json", action="store_true")
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
    pg.add_argument("--runs", action="store_true", help="also delete Dagster runs older than MMRAG_RUN_RETENTION_DAYS "
                    "whose materializations are all superseded")
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
    pup.add_argument("--no-embed-service", action="store_true",
                     help="load the embedding models in each process instead of one warm service")
    pup.add_argument("--no-parse-service", action="store_true",
                     help="each run starts its own parse worker instead of one warm service")
    pps = sub.add_parser("parse-server", help="the warm parse service: supervised parse workers that outlive "
                                              "runs (mmrag up runs one)")
    pps.add_argument("--port", type=int, default=0, help="default: a free port")
    pps.add_argument("--workers", type=int, default=None,
                     help="parse workers at most when runs parse at once (default MMRAG_PARSE_WORKERS or 2)")
    pes = sub.add_parser("embed-server", help="the warm embedding service: the text model and CLIP over an "
                                              "OpenAI-compatible /v1/embeddings (mmrag up runs one)")
    pes.add_argument("--host", default="127.0.0.1")
    pes.add_argument("--port", type=int, default=8100)
    pu = sub.add_parser("ui", help="the chat page (Streamlit): ask, see the answer, cited chunks, images, frames")
    pu.add_argument("--port", type=int, default=8501)
    pu.add_argument("--host", default="127.0.0.1")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("lightrag", "nano-vectordb", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from mmrag.cli.admin import cmd_dev, cmd_eval, cmd_gc, cmd_status
    from mmrag.cli.check import cmd_check
    from mmrag.cli.ingest import cmd_ingest
    from mmrag.cli.query import cmd_query
    from mmrag.cli.serve import (
        cmd_api,
        cmd_embed_server,
        cmd_parse_server,
        cmd_ui,
        cmd_up,
    )
    from mmrag.index.milvus_store import IndexBusyError
    from mmrag.orchestration.runs import skip_exit_collection

    skip_exit_collection()
    try:
        return {"ingest": cmd_ingest, "query": cmd_query, "status": cmd_status, "dev": cmd_dev,
                "eval": cmd_eval, "gc": cmd_gc, "check": cmd_check, "ui": cmd_ui, "api": cmd_api, "up": cmd_up,
                "embed-server": cmd_embed_server, "parse-server": cmd_parse_server}[args.cmd](args)
    except IndexBusyError as e:
        print(f"mmrag: {e}", file=sys.stderr)
        return EXIT_BUSY

