"""maintenance_job: keep the data dir and the Dagster instance bounded (daily, `maintenance_schedule`).

Deletes finished runs older than MMRAG_RUN_RETENTION_DAYS whose materializations are all superseded
(`mmrag.orchestration.retention`: each file keeps its latest materialization of every stage), then the
blobs nothing names (`mmrag gc`). Not an index writer: it runs beside ingests (blob GC's grace
period protects what a run in flight holds; it reads Milvus, so with Milvus Lite it waits for the
data dir's lock like a query).
"""

from dagster import Config, OpExecutionContext, in_process_executor, job, op

from mmrag.orchestration.planner import LITE_WRITER_TAG
from mmrag_resources.data_dir import DataDirResource
from mmrag_resources.milvus import MilvusResource


class MaintenanceConfig(Config):
    run_retention_days: float = -1.0  # below 0: MMRAG_RUN_RETENTION_DAYS
    blob_grace_s: float = 3600.0


@op(description="Purge superseded old runs, then unreferenced blobs.")
def purge_superseded(context: OpExecutionContext, config: MaintenanceConfig, data_dir: DataDirResource,
                     milvus: MilvusResource) -> dict:
    from mmrag.index.gc import collect_garbage
    from mmrag.orchestration.retention import purge_runs

    settings = data_dir.settings().with_(milvus_uri=milvus.settings().milvus_uri,
                                         collection_prefix=milvus.settings().collection_prefix)
    days = config.run_retention_days if config.run_retention_days >= 0 else settings.run_retention_days
    runs = purge_runs(context.instance, days * 86400) if days > 0 else {"purged": 0, "note": "retention off"}
    blobs = collect_garbage(settings, config.blob_grace_s)
    context.log.info(f"runs: {runs}; blobs: {blobs}")
    context.add_output_metadata({"runs_purged": runs.get("purged", 0), "blobs_removed": blobs["removed"],
                                 "blob_bytes_freed": blobs["freed_bytes"]})
    return {"runs": runs, "blobs": blobs}


@job(executor_def=in_process_executor, tags={"mmrag/kind": "maintenance", **LITE_WRITER_TAG},
     description="Purge superseded old runs and unreferenced blobs.")
def maintenance_job():
    purge_superseded()
