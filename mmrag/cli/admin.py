"""The admin commands: `mmrag status`, `gc`, `eval` and `dev` (the Dagster UI)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mmrag.cli.common import EXIT_BAD_ROOT, EXIT_FAILED_FILES, progress, source_name
from mmrag.cli.ingest import sync_folder
from mmrag.config import Settings
from mmrag.manifest import CONTENT, RETRIED, Status
from mmrag.orchestration.instance import REPO_ROOT, ensure_dagster_home


def cmd_eval(args) -> int:
    from mmrag.models import factory
    from mmrag.retrieval.evaluation import evaluate, plot_recall, recall_table

    settings = Settings.from_env()
    folder = Path(args.dir).expanduser().resolve()
    docs = folder / "documents"
    if not (folder / "samples.jsonl").is_file() or not docs.is_dir():
        print(f"mmrag: {folder} needs documents/ and samples.jsonl (MMLongBench-Doc layout)", file=sys.stderr)
        return EXIT_BAD_ROOT
    source = args.source or f"eval-{source_name(folder)}"
    scan, run_errors, _ = sync_folder(settings, docs, source, lambda msg: progress(args, msg))
    if run_errors:
        print(f"mmrag: indexing {docs} failed: {run_errors[0][1]}", file=sys.stderr)
        return EXIT_FAILED_FILES
    res = evaluate(settings, folder, source, text_search=args.text_search, limit=args.limit,
                   llm=factory.llm_client(settings))
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
    if rr := res.get("rerank"):
        print(f"reranked: top {rr['top_n']} by {rr['model']} ({rr['where']}), p50 {rr['ms_p50']:.0f} ms"
              + (f", {rr['errors']} failed (fused order kept)" if rr["errors"] else ""))
    print(f"plot: {plot}")
    return 0


def cmd_gc(args) -> int:
    from mmrag.index.gc import collect_garbage

    settings = Settings.from_env()
    res = collect_garbage(settings, grace_s=args.grace_s, dry_run=args.dry_run)
    if args.runs:
        from mmrag.orchestration.instance import dagster_instance
        from mmrag.orchestration.retention import purge_runs

        with dagster_instance(settings) as instance:
            res["runs"] = (purge_runs(instance, settings.run_retention_days * 86400, dry_run=args.dry_run)
                           if settings.run_retention_days > 0 else {"purged": 0, "note": "MMRAG_RUN_RETENTION_DAYS=0"})
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        verb = "would remove" if args.dry_run else "removed"
        print(f"blobs: {verb} {res['removed']} ({res['freed_bytes'] / 1e6:.1f} MB), kept {res['kept']}")
        if "runs" in res:
            print(f"runs: {verb} {res['runs']['purged']} superseded of {res['runs'].get('examined', 0)} old enough")
    return 0


def cmd_status(args) -> int:
    from mmrag.serve.service import status_json

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
                  + (f"  — {f['reason'][:100]}" if f["reason"] and f["status"] != Status.INDEXED else ""))
        if s["stale"] or s["deleted"]:
            print(f"  stale: {', '.join(s['stale']) or '-'}; deleted: {', '.join(s['deleted']) or '-'}")
    if out["usage"]["requests"] or out["usage"]["cache_hits"]:
        print(_usage_line(out["usage"]))
    if board := out.get("service"):
        print(f"mmrag up: {board['status']}")
        for name, p in board["parts"].items():
            print(f"  {name:8s} {p['state']:10s}" + (f" {p['reason'][:160]}" if p["reason"] and p["state"] != "ok" else "")
                  + (f" ({p['restarts']} restarts)" if p.get("restarts") else ""))
    return 0


def _usage_line(u: dict) -> str:
    """`mmrag status`'s model usage: totals, per model, the cost under MMRAG_PRICES."""
    lines = [f"model usage: {u['requests']} requests, {u['prompt_tokens']} prompt + {u['completion_tokens']} "
             f"completion tokens, {u['images']} images; {u['cache_hits']} cache hits "
             f"(saved {u['saved_prompt_tokens'] + u['saved_completion_tokens']} tokens)"]
    cost = u.get("cost") or {}
    for model, m in u["by_model"].items():
        usd = f", ${cost['by_model'][model]:.4f}" if model in cost.get("by_model", {}) else ""
        lines.append(f"  {model or '(unnamed)'}: {m['requests']} requests, {m['prompt_tokens']} + "
                     f"{m['completion_tokens']} tokens, {m['images']} images, {m['cache_hits']} cache hits{usd}")
    if cost:
        lines.append(f"  cost: ${cost['usd']:.4f} (cache hits saved ${cost['saved_usd']:.4f})"
                     + (f"; unpriced: {', '.join(cost['unpriced'])}" if cost["unpriced"] else ""))
    if u.get("cost_error"):
        lines.append(f"  no cost: {u['cost_error']}")
    return "\n".join(lines)


def _status_word(f: dict) -> str:
    """`failed (content)`, `failed (retry 14:05)`, `partial (retry due)`, or the status itself."""
    import time

    if f["status"] not in RETRIED:
        return f["status"]
    if f["failure_kind"] == CONTENT:
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

