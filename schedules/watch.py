"""Which folders are watched: sources registered by `mmrag ingest` plus MMRAG_WATCH (read per tick)."""


import os

from mmrag.state import Manifest


def watched_roots(manifest: Manifest, env: dict | None = None) -> dict[str, str]:
    """`MMRAG_WATCH="docs=/data/docs;specs=/mnt/specs"` adds (or re-points) sources."""
    env = os.environ if env is None else env
    roots = manifest.sources()
    for item in filter(None, (env.get("MMRAG_WATCH") or "").split(";")):
        name, sep, root = item.partition("=")
        if sep and name.strip() and root.strip():
            roots[name.strip()] = root.strip()
            manifest.set_source(name.strip(), root.strip())
    return roots
