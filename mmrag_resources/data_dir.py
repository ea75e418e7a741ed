"""The local data dir (MMRAG_HOME): snapshots and extracted images, the manifest, caches."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from dagster import ConfigurableResource, InitResourceContext

from mmrag.manifest import Manifest
from mmrag.sources.blobs import BlobStore
from mmrag_resources._settings import resolved


class DataDirResource(ConfigurableResource):
    """`home` unset = MMRAG_HOME, else ./.mmrag."""

    home: Optional[str] = None

    def setup_for_execution(self, context: InitResourceContext) -> None:
        """Record which process executes the run (host, pid, start time), so a later ingest can tell
        that the run died and free what it held (`mmrag.orchestration.runs`); `kill -USR1 <pid>` then writes the
        process's stacks to `<home>/logs/stacks-<pid>.txt`. The process skips its exit-time garbage
        collection (`mmrag.orchestration.runs.skip_exit_collection`)."""
        if context.instance is not None and context.run_id:
            from mmrag.orchestration.runs import (
                enable_stack_dumps,
                skip_exit_collection,
                tag_current_run,
            )

            tag_current_run(context.instance, context.run_id)
            enable_stack_dumps(self.settings().home / "logs")
            skip_exit_collection()

    def settings(self):
        return resolved(home=Path(self.home) if self.home else None)

    @property
    def path(self) -> Path:
        p = self.settings().home
        p.mkdir(parents=True, exist_ok=True)
        return p

    def manifest(self) -> Manifest:
        return Manifest(self.settings().state_path)

    def blobs(self) -> BlobStore:
        return BlobStore(self.settings().blobs_dir)
