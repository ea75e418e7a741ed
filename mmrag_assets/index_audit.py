"""index_audit: the index audit (`mmrag.audit`) as an asset, for the UI and a schedule.

Each materialization compares the folders, the manifest, Milvus, the graph, the blobs and the stage
outputs (`mmrag check` does the same from the shell) and records every difference in its metadata;
its asset check `index_equals_folders` fails when any is found. With `repair: true` it also deletes
the orphans and requests the files whose parts disagree again (status `pending`): the sensor, not
this run, indexes them. It runs in `audit_job` (the Milvus Lite tag: a Lite data dir admits one
process at a time); `audit_schedule` runs it daily, off until switched on in the UI.
"""

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    DefaultScheduleStatus,
    MaterializeResult,
    MetadataValue,
    ScheduleDefinition,
    asset,
    define_asset_job,
    in_process_executor,
)

from mmrag.orchestration.planner import LITE_WRITER_TAG
from mmrag_resources._settings import pipeline_settings
from mmrag_resources.data_dir import DataDirResource
from mmrag_resources.embedders import ImageEmbedderResource, TextEmbedderResource
from mmrag_resources.llm import LLMResource
from mmrag_resources.milvus import MilvusResource
from mmrag_resources.parsers import ParserResource
from mmrag_resources.whisper import WhisperResource


class AuditConfig(Config):
    sources: list[str] = []  # default: every source
    repair: bool = False
    grace_s: float = 3600.0


def differences_table(rep) -> MetadataValue:
    lines = ["| kind | part | file or item | detail | repair |", "|---|---|---|---|---|"]
    for d in rep.differences[:200]:
        cell = lambda x: str(x).replace("|", "\\|").replace("\n", " ")[:160]  # noqa: E731
        lines.append(f"| {d.kind} | {d.part} | `{cell(d.key)}` | {cell(d.detail)} | {d.fix} |")
    if len(rep.differences) > 200:
        lines.append(f"| … | | | {len(rep.differences) - 200} more | |")
    return MetadataValue.md("\n".join(lines) if rep.differences else "no differences")


@asset(group_name="maintenance", kinds={"python"},
       check_specs=[AssetCheckSpec("index_equals_folders", asset="index_audit",
                                   description="No difference between the folders and any part of the index.")],
       description="Audit of the whole index: folders, manifest, Milvus rows, LightRAG graph, blobs and stage "
                   "outputs compared, every difference named (repair: true deletes orphans, requests files again).")
def index_audit(context: AssetExecutionContext, config: AuditConfig, data_dir: DataDirResource,
                milvus: MilvusResource, parsers: ParserResource, llm: LLMResource, text_embedder: TextEmbedderResource,
                image_embedder: ImageEmbedderResource, whisper: WhisperResource) -> MaterializeResult:
    from mmrag.audit.index_audit import audit
    from mmrag.audit.repair import repair

    settings = pipeline_settings(parsers, llm, text_embedder, image_embedder, whisper).with_(
        home=data_dir.settings().home, milvus_uri=milvus.settings().milvus_uri,
        collection_prefix=milvus.settings().collection_prefix)
    rep = audit(settings, config.sources or None, grace_s=config.grace_s)
    meta = {"clean": rep.clean, "differences": len(rep.differences),
            "table": differences_table(rep), "summary": MetadataValue.json(rep.to_json()["summary"]),
            "seconds": MetadataValue.json(rep.seconds), **rep.counts}
    if config.repair and not rep.clean:
        done = repair(settings, rep, context.instance, grace_s=config.grace_s)
        meta["repair"] = MetadataValue.json(done)
        context.log.info(f"repair: {done}; the sensor indexes the {done['files_requested']} files requested")
    for d in rep.differences[:50]:
        context.log.warning(d.line())
    check = AssetCheckResult(check_name="index_equals_folders", passed=rep.clean, severity=AssetCheckSeverity.WARN,
                             description="clean" if rep.clean else f"{len(rep.differences)} differences "
                             + ", ".join(f"{k}: {v}" for k, v in rep.to_json()["summary"].items()))
    return MaterializeResult(metadata=meta, check_results=[check])


audit_job = define_asset_job(
    "audit_job", selection=[index_audit], executor_def=in_process_executor, tags=LITE_WRITER_TAG,
    description="Audit the index against the folders (mmrag check).")

audit_schedule = ScheduleDefinition(
    name="audit_schedule", job=audit_job, cron_schedule="30 4 * * *", default_status=DefaultScheduleStatus.STOPPED,
    description="Audit the index daily (after the re-index at 03:00); switch on in the UI.")
