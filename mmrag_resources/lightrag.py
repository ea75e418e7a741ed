"""LightRAG: the knowledge graph (NetworkX + JSON under the data dir, vectors in the app's Milvus)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from dagster import ConfigurableResource

from mmrag.models import factory
from mmrag_resources._settings import resolved

if TYPE_CHECKING:
    from mmrag.graph.store import GraphStore


class LightRAGResource(ConfigurableResource):
    """Unset fields resolve when a run starts: `working_dir` = MMRAG_HOME/lightrag, `namespace` =
    "{MMRAG_COLLECTION_PREFIX}_graph" (LightRAG's workspace: it names the Milvus collections
    `{namespace}_entities`, `_relationships`, `_chunks`). Milvus comes from MMRAG_MILVUS_URI/_TOKEN/_DB,
    so the graph's vectors live in the same Milvus as the rest of the index."""

    working_dir: Optional[str] = None
    namespace: Optional[str] = None

    def store(self, text_embedder: Any, llm: Any, manifest) -> GraphStore:
        """The process's GraphStore for this configuration (`mmrag.models.factory.graph_store`)."""
        return factory.graph_store(resolved(), text_embedder=text_embedder, llm=llm, manifest=manifest,
                                   working_dir=self.working_dir, namespace=self.namespace)


def close_stores() -> None:
    """Finalize every cached GraphStore of this process (tests, or a clean shutdown)."""
    factory.close_graph_stores()
