"""`mmrag`: ingest a folder through the Dagster assets, query the index, show its status.

Runs go through a real Dagster instance (DAGSTER_HOME, default $MMRAG_HOME/dagster with the
repository's dagster.yaml), so `mmrag dev` / `dagster dev` shows every run the CLI made.

`main` (the parser) is in `mmrag.cli.main`; the commands, by concern: `ingest`, `query`, `serve`
(api, ui, up) and `admin` (status, gc, eval, dev).
"""

from mmrag.cli.main import main

__all__ = ["main"]
