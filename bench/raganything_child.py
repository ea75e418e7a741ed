"""The RAG-Anything side of `bench/vs_raganything.py`, run as its own process (so its wall time
includes its imports and model loads): `python bench/raganything_child.py SPEC.json` processes every
file of the spec with RAG-Anything 1.4.3 and writes a JSON result; `rag_graph_counts` reads its graph."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import threading
import time
from collections import Counter
from pathlib import Path


def rag_child(spec_path: str) -> int:
    """Runs inside the child: process every file with RAG-Anything, write a JSON result."""
    spec = json.loads(Path(spec_path).read_text())
    t_start = time.perf_counter()
    import logging

    import numpy as np
    from lightrag.llm.openai import openai_complete_if_cache
    from lightrag.utils import EmbeddingFunc, Tokenizer
    from raganything import RAGAnything, RAGAnythingConfig

    from mmrag.graph.lightrag_adapter import SharedTokenizer
    from mmrag.models.embedders import TextEmbedder
    from mmrag.models.llm import guess_image_mime

    logging.getLogger("lightrag").setLevel(logging.WARNING)
    base_url, api_key = spec["base_url"], "bench"
    embedder = TextEmbedder("all-MiniLM-L6-v2")
    dim = embedder.dim  # loads the model
    embed_lock = threading.Lock()

    def _embed(texts):
        with embed_lock:
            return embedder.embed(texts)

    async def embed(texts, **_kw) -> np.ndarray:
        return await asyncio.to_thread(_embed, list(texts))

    async def llm(prompt, system_prompt=None, history_messages=None, **kw):
        return await openai_complete_if_cache("fake-llm", prompt, system_prompt=system_prompt,
                                              history_messages=history_messages or [], base_url=base_url,
                                              api_key=api_key, **kw)

    async def vision(prompt, system_prompt=None, history_messages=None, image_data=None, messages=None, **kw):
        if messages:
            return await openai_complete_if_cache("fake-vlm", "", messages=messages, base_url=base_url,
                                                  api_key=api_key, **kw)
        if image_data:
            mime = guess_image_mime(base64.b64decode(image_data[:4096] + "=" * (-len(image_data[:4096]) % 4)))
            msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
            msgs.append({"role": "user", "content": [
                {"type": "text", "text": prompt},
                {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{image_data}"}}]})
            return await openai_complete_if_cache("fake-vlm", "", messages=msgs, base_url=base_url,
                                                  api_key=api_key, **kw)
        return await llm(prompt, system_prompt, history_messages, **kw)

    work = Path(spec["workdir"])
    config = RAGAnythingConfig(working_dir=str(work / "rag_storage"), parser="docling",
                               parser_output_dir=str(work / "parser_output"))
    rag = RAGAnything(config=config, llm_model_func=llm, vision_model_func=vision,
                      embedding_func=EmbeddingFunc(embedding_dim=dim, max_token_size=256, func=embed),
                      lightrag_kwargs={"tokenizer": Tokenizer("mmrag-word", SharedTokenizer())})

    async def go() -> list[dict]:
        out = []
        for f in spec["files"]:
            t0 = time.perf_counter()
            try:
                await rag.process_document_complete(f)
                err = None
            except Exception as e:  # noqa: BLE001 - reported per file
                err = f"{type(e).__name__}: {e}"
            out.append({"path": f, "seconds": time.perf_counter() - t0, "error": err})
        await rag.finalize_storages()
        return out

    t_ready = time.perf_counter()
    per_file = asyncio.run(go())
    t_done = time.perf_counter()
    statuses: Counter[str] = Counter()
    ds = work / "rag_storage" / "kv_store_doc_status.json"
    if ds.is_file():
        for rec in json.loads(ds.read_text()).values():
            statuses[str(rec.get("status"))] += 1
    Path(spec["out"]).write_text(json.dumps({
        "per_file": per_file, "doc_status": dict(statuses),
        "setup_s": t_ready - t_start, "processing_s": t_done - t_ready,
    }))
    return 0


def rag_graph_counts(working_dir: Path) -> dict:
    import networkx as nx

    f = working_dir / "graph_chunk_entity_relation.graphml"
    if not f.is_file():
        return {"nodes": 0, "edges": 0, "node_types": {}}
    g = nx.read_graphml(f)
    types = Counter(str(d.get("entity_type", "")) for _, d in g.nodes(data=True))
    return {"nodes": g.number_of_nodes(), "edges": g.number_of_edges(), "node_types": dict(types.most_common())}


if __name__ == "__main__":
    sys.exit(rag_child(sys.argv[1]))
