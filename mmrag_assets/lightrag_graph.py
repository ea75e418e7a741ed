"""lightrag_graph: the file's contributions to the LightRAG knowledge graph.

With an LLM: LightRAG's entity/relation extraction plus one entity per modal item. Without one: a
structural graph (document → sections → chunks and modal items, "Figure N" cross-references). The
file's previous contributions are removed first; chunks shared with other files survive.

Each file's final status (indexed / partial, or failed when its graph failed) is written in the same
commit as its graph contributions (`GraphStore.index_files(on_commit=...)`): until then the file is
`indexing`, i.e. stale, and a run killed in between is redone by the next sync.

Asset check `graph_refs_resolve`, per file committed: every entity, relation and chunk the manifest
says the file contributed is in LightRAG's stores. A file that fails it is recorded as a transient
failure, so the next sync indexes it again.
"""

import time

from dagster import AssetExecutionContext, Output, asset

from mmrag.index.stages import FileOutcome, WrittenFile
from mmrag.manifest import TRANSIENT, Status, record_outcome
from mmrag.models import usage
from mmrag_assets._checks import GRAPH_CHECK, evaluations, spec
from mmrag_assets._meta import outcome_counts, per_file, report_usage
from mmrag_assets.partitions import source_files
from mmrag_resources._settings import resolved
from mmrag_resources.data_dir import DataDirResource
from mmrag_resources.embedders import TextEmbedderResource
from mmrag_resources.lightrag import LightRAGResource
from mmrag_resources.llm import LLMResource


@asset(partitions_def=source_files, io_manager_key="stage_store", group_name="index", kinds={"networkx"},
       pool="mmrag_index",
       check_specs=[spec("lightrag_graph", GRAPH_CHECK, "Every entity, relation and chunk the file contributed "
                         "(the manifest's graph references) is in LightRAG's stores.")],
       description="The file's entities, relations and chunks in LightRAG (graph on disk, vectors in Milvus).")
def lightrag_graph(context: AssetExecutionContext, embeddings: dict, milvus_partitions: dict[str, WrittenFile],
                   lightrag: LightRAGResource, text_embedder: TextEmbedderResource, llm: LLMResource,
                   data_dir: DataDirResource):
    client = llm.client()
    manifest = data_dir.manifest()
    out, rows, batch, known = {}, [], [], {}
    written: dict[str, WrittenFile] = {}
    for key in context.partition_keys:
        emb, w = embeddings[key], milvus_partitions[key]
        if isinstance(emb, FileOutcome) or not isinstance(w, WrittenFile) or not w.written:
            out[key] = {"status": "not indexed"}
            rows.append((key, "unchanged", "not indexed by this run; its earlier graph contributions are kept"))
        else:
            written[key] = w
            batch.append((key, emb.doc, emb.chunks))
            known.update(zip((c.text for c in emb.chunks), emb.text_vectors))
    settings = resolved()

    def statuses(done: dict) -> dict[str, dict]:
        """The manifest fields of the session's files, committed with their graph contributions."""
        fields, now = {}, time.time()
        for key, result in done.items():
            if isinstance(result, Exception):  # model server faults, garbage replies: retried later
                outcome = record_outcome(Status.FAILED, f"graph: {type(result).__name__}: {result}", kind=TRANSIENT,
                                         prior=written[key].prior_transient, now=now, backoff=settings.retry_at)
            else:
                outcome = written[key].outcome
            fields[key] = outcome.fields()
        return fields

    if not batch:  # nothing for the graph: LightRAG is not opened (nor the embedder asked)
        yield Output(out, metadata={**outcome_counts(embeddings), **per_file(context, rows)})
        yield from evaluations("lightrag_graph", GRAPH_CHECK, {})
        return
    graph = lightrag.store(text_embedder.embedder(client), client, manifest)
    with usage.metered() as meter:  # each file's extraction and merge requests; shared work under ""
        try:
            results = graph.index_files(batch, known_vectors=known, on_commit=statuses)
        finally:
            spent = report_usage(context, meter, manifest)
    for key, result in results.items():
        if isinstance(result, Exception):  # one file's graph failure does not stop the others
            reason = f"graph: {type(result).__name__}: {result}"
            context.log.error(f"{key}: {reason}")
            out[key] = {"status": Status.FAILED, "reason": reason}
            rows.append((key, Status.FAILED, reason))
        else:
            out[key] = {"status": Status.INDEXED, **result}
            rows.append((key, Status.INDEXED, ", ".join(f"{k} {v}" for k, v in result.items() if k not in ("nodes", "edges"))))
    committed, t_check = [k for k, v in out.items() if v.get("status") == Status.INDEXED], time.perf_counter()
    unresolved = graph.unresolved_refs(committed)
    checks = {}
    for key in committed:
        if lost := unresolved.get(key):
            why = f"{len(lost)} graph references do not resolve: " + ", ".join(lost[:5])
            context.log.error(f"{key}: {why}")
            manifest.update(key, **record_outcome(Status.FAILED, f"graph check: {why}", kind=TRANSIENT, now=time.time(),
                                                  prior=written[key].prior_transient, backoff=settings.retry_at).fields())
            checks[key] = (False, why, {"unresolved": len(lost)})
        else:
            checks[key] = (True, "its entities, relations and chunks are in the graph", {})
    nodes, edges = graph.stats()
    yield Output(out, metadata={**outcome_counts(embeddings), "graph_nodes": nodes, "graph_edges": edges,
                                "mode": "llm extraction" if client else "structural (no LLM)",
                                "check_seconds": round(time.perf_counter() - t_check, 3),
                                **spent, **per_file(context, rows)})
    yield from evaluations("lightrag_graph", GRAPH_CHECK, checks)
