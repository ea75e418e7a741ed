"""The LightRAG knowledge graph: the store, its crash-safe sessions, extraction, vectors, scope."""
