"""LightRAG: the knowledge graph (NetworkX + JSON under the data dir, vectors in the app's Milvus)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from dagster import ConfigurableResource

from mmrag_resources._settings import resolved

if TYPE_CHECKING:
    from mmrag.graph import GraphStore

_stores: dict[tuple, Any] = {}  # one GraphStore per process and configuration
_guard = threading.Lock()


class LightRAGResource(ConfigurableResource):
    """Unset fields resolve when a run starts: `working_dir` = MMRAG_HOME/lightrag, `namespace` =
    "{MMRAG_COLLECTION_PREFIX}_graph" (LightRAG's workspace: it names the Milvus collections
    `{namespace}_entities`, `_relationships`, `_chunks`). Milvus comes from MMRAG_MILVUS_URI/_TOKEN/_DB,
    so the graph's vectors live in the same Milvus as the rest of the index."""

    working_dir: Optional[str] = None
    namespace: Optional[str] = None

    def config_key(self) -> tuple:
        s = resolved()
        working_dir = Path(self.working_dir) if self.working_dir else s.graph_dir
        return (str(working_dir.expanduser().resolve()), self.namespace or f"{s.collection_prefix}_graph",
                s.resolved_milvus_uri, s.milvus_token, s.milvus_db, s.graph_gleaning, s.graph_unit_tokens,
                s.llm_concurrency)

    def store(self, embed_fn: Callable, embed_dim: int, llm: Any, manifest) -> GraphStore:
        """The process's GraphStore for this configuration, built once (LightRAG and its Milvus
        collections are opened on first use); later calls rebind the embedder, LLM and manifest."""
        from mmrag.graph import GraphStore
        from mmrag.lightrag_runtime import workspace_name

        key = (*self.config_key(), embed_dim)
        working_dir, namespace, uri, token, db, gleaning, unit_tokens, concurrency, _ = key
        with _guard:
            store = _stores.get(key)
            if store is None:
                for old_key, old in list(_stores.items()):  # LightRAG allows one live store per workspace
                    if old.workspace == workspace_name(namespace):
                        old.close()
                        del _stores[old_key]
                if not uri.startswith(("http://", "https://", "tcp://", "grpc://")):
                    Path(uri).parent.mkdir(parents=True, exist_ok=True)
                store = _stores[key] = GraphStore(Path(working_dir), uri, token, db, embed_fn=embed_fn,
                                                  embed_dim=embed_dim, llm=llm, manifest=manifest, namespace=namespace,
                                                  unit_tokens=unit_tokens,
                                                  lightrag_kwargs={"entity_extract_max_gleaning": gleaning,
                                                                   "llm_model_max_async": max(1, concurrency)})
            else:
                store.rebind(embed_fn, llm, manifest)
            return store


def close_stores() -> None:
    """Finalize every cached GraphStore of this process (tests, or a clean shutdown)."""
    with _guard:
        for store in _stores.values():
            store.close()
        _stores.clear()
