"""Milvus: a local path = Milvus Lite (embedded default, under the data dir); http(s):// = a server or cluster."""

from __future__ import annotations

from typing import Optional

from dagster import ConfigurableResource

from mmrag.index.milvus_store import MilvusStore
from mmrag.models import factory
from mmrag_resources._settings import resolved


# A step holds an `mmrag_index` pool slot while it opens Milvus: waiting long there for a Milvus Lite data
# dir held by another process could wait on a process that waits for that slot (mmrag.index.lite_lock).
# `mmrag ingest` takes the data dir before its runs start, so its steps never wait here; a run launched by
# the daemon (`mmrag dev`) beside it fails after this wait and is requested again by the sensor.
STEP_LITE_WAIT_S = 10.0


class MilvusResource(ConfigurableResource):
    """Unset fields come from MMRAG_MILVUS_URI / _TOKEN / _DB / MMRAG_COLLECTION_PREFIX at run time."""

    uri: Optional[str] = None
    token: Optional[str] = None
    db_name: Optional[str] = None
    collection_prefix: Optional[str] = None
    home: Optional[str] = None

    def settings(self):
        from pathlib import Path

        return resolved(milvus_uri=self.uri, milvus_token=self.token, milvus_db=self.db_name,
                        collection_prefix=self.collection_prefix, home=Path(self.home) if self.home else None)

    @property
    def is_lite(self) -> bool:
        return self.settings().is_milvus_lite

    def index(self, text_dim: int, image_dim: int | None) -> MilvusStore:
        """The store with its collections and indexes created (idempotent, once per process)."""
        return factory.milvus_index(self.settings(), text_dim, image_dim, wait_s=STEP_LITE_WAIT_S)

    def store(self) -> MilvusStore:
        return factory.milvus_store(self.settings(), wait_s=STEP_LITE_WAIT_S)
