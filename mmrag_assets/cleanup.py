"""Removing a deleted source file: its Milvus rows, its graph contributions, its manifest entry.

An op job (not an asset): it acts on partitions that no longer exist. The sensor requests it with
the deleted keys in its config; the CLI runs it in-process. Idempotent.
"""


from pathlib import Path

from dagster import Config, OpExecutionContext, in_process_executor, job, op

from mmrag.faults import crash_point
from mmrag.index.stage_files import STAGES
from mmrag_resources.data_dir import DataDirResource
from mmrag_resources.embedders import TextEmbedderResource
from mmrag_resources.lightrag import LightRAGResource
from mmrag_resources.llm import LLMResource
from mmrag_resources.milvus import MilvusResource
from mmrag_resources.stage_store import StageStore


class CleanupConfig(Config):
    file_keys: list[str]


def remove_files(keys: list[str], milvus: MilvusResource, lightrag: LightRAGResource, text_embedder,
                 llm, data_dir: DataDirResource, log=None) -> dict:
    from dagster import AssetKey

    manifest = data_dir.manifest()
    store = milvus.store()
    client = llm.client()
    text = text_embedder.embedder(client)
    graph = lightrag.store(text, client, manifest)
    stage_store = StageStore(home=data_dir.home)
    rows, skipped, gone = 0, [], []
    roots = manifest.sources()
    for key in keys:
        source, _, rel = key.partition(":")
        if source in roots and (Path(roots[source]) / rel).is_file():
            # Re-created after the deletion was requested: its new index entries must stay.
            skipped.append(key)
            continue
        n = store.delete_file(key)
        for stage in STAGES:
            stage_store.delete(AssetKey(stage), key)
        rows += n
        gone.append(key)
        crash_point("cleanup")
        if log:
            log.info(f"removed {key}: {n} Milvus rows")
    if rows:
        store.flush()
    # Last, in one commit: the graph contributions and the manifest entries. A run killed before it
    # leaves the entries, so the next sync finds the files deleted again and finishes the job.
    if gone:
        graph.remove_files(gone, drop_records=True)
    return {"files": len(gone), "rows_deleted": rows, "skipped_recreated": len(skipped)}


@op(description="Delete everything derived from source files that no longer exist.", pool="mmrag_index")
def remove_deleted_files(context: OpExecutionContext, config: CleanupConfig, milvus: MilvusResource,
                         lightrag: LightRAGResource, text_embedder: TextEmbedderResource, llm: LLMResource,
                         data_dir: DataDirResource) -> dict:
    from mmrag.models import usage
    from mmrag_assets._meta import report_usage

    # LightRAG rebuilds the entities a deleted file shared from their cached extractions, and may ask
    # the model to summarise them again: counted as shared work (the files' own rows are gone)
    with usage.metered() as meter:
        try:
            result = remove_files(config.file_keys, milvus, lightrag, text_embedder, llm, data_dir, context.log)
        finally:
            spent = report_usage(context, meter, data_dir.manifest())
    context.add_output_metadata({**result, **spent})
    return result


@job(executor_def=in_process_executor, tags={"mmrag/kind": "cleanup"},
     description="Remove the index entries of deleted source files.")
def cleanup_job():
    remove_deleted_files()
