"""`mmrag check [--source S] [--repair] [--json]`: the index audit (`mmrag.audit`) from the shell.

Exit 0 when the index equals the folders (after the repair, with --repair), 1 when differences
remain, 3 when a repair was refused because index runs are in flight.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from mmrag.cli.common import EXIT_BUSY, EXIT_FAILED_FILES, progress
from mmrag.config import Settings


def cmd_check(args) -> int:
    from mmrag.audit.index_audit import audit
    from mmrag.audit.repair import RepairRefused, repair
    from mmrag.cli.ingest import sync_folder
    from mmrag.orchestration.instance import dagster_instance

    settings = Settings.from_env()
    t0 = time.perf_counter()
    before = audit(settings, args.source or None, grace_s=args.grace_s)
    out: dict = {"before": before.to_json()}
    after = before
    if args.repair and not before.clean:
        def sync(source: str, root: Path) -> None:
            progress(args, f"re-indexing what differs in {source} ({root})")
            sync_folder(settings, root, source, lambda msg: progress(args, msg))

        try:
            with dagster_instance(settings) as instance:
                out["repair"] = repair(settings, before, instance, sync=sync, grace_s=args.grace_s)
        except RepairRefused as e:
            print(f"mmrag: {e}", file=sys.stderr)
            if args.json:
                print(json.dumps({**out, "refused": str(e)}, indent=2))
            return EXIT_BUSY
        after = audit(settings, args.source or None, grace_s=args.grace_s)
        out["after"] = after.to_json()
    out["seconds"] = round(time.perf_counter() - t0, 3)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        _print(before, "index")
        if "repair" in out:
            done = {k: v for k, v in out["repair"].items() if v}
            print("repair: " + (", ".join(f"{k.replace('_', ' ')} {v}" for k, v in done.items()) or "nothing to do"))
            _print(after, "after the repair")
        print(f"({out['seconds']:.1f} s)")
    return 0 if after.clean else EXIT_FAILED_FILES


def _print(rep, what: str) -> None:
    c = rep.counts
    scope = ", ".join(rep.sources) or "no sources"
    print(f"{what} ({scope}): {c.get('files', 0)} files, {c.get('milvus_rows', 0)} Milvus rows, "
          f"{c.get('graph_nodes', 0)} graph nodes, {c.get('blobs', 0)} blobs — "
          + ("clean" if rep.clean else f"{len(rep.differences)} differences"))
    for d in rep.differences:
        print("  " + d.line())
