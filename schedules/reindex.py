"""reindex_schedule: daily, re-materialize the partitions that are stale.

Stale = the content changed since it was indexed, or the pipeline's config fingerprint (parser,
models, prompt version, chunking) differs from the one recorded, or a run died before the file's
graph step committed, or the last attempt failed transiently and its backoff has passed (a failure
tied to the content waits for new content or config).
Unchanged files are not touched, so a no-change day costs one scan.
"""


from dagster import RunRequest, ScheduleEvaluationContext, SkipReason, schedule

from mmrag.orchestration.planner import contiguous_ranges, range_tags
from mmrag.orchestration.runs import reap_dead_runs
from mmrag.sources.sync import plan_sync, scan_root
from mmrag_assets.jobs import LITE_WRITER_TAG, ingest_job
from mmrag_assets.partitions import source_files
from mmrag_resources._settings import pipeline_settings
from mmrag_resources.data_dir import DataDirResource
from mmrag_resources.embedders import ImageEmbedderResource, TextEmbedderResource
from mmrag_resources.llm import LLMResource
from mmrag_resources.milvus import MilvusResource
from mmrag_resources.parsers import ParserResource
from mmrag_resources.whisper import WhisperResource
from schedules.watch import schedule_status, watched_roots


def stale_partitions(instance, manifest, roots: dict, fingerprint: str) -> list[str]:
    partitions = set(instance.get_dynamic_partitions(source_files.name))
    records = {r.file_key: r for r in manifest.all()}
    stale = []
    for source, root in sorted(roots.items()):
        plan = plan_sync(scan_root(root, source), records, partitions, fingerprint=fingerprint)
        stale += [k for k in plan.changed + plan.stale if k in partitions]
    return stale


@schedule(name="reindex_schedule", cron_schedule="0 3 * * *", job=ingest_job, default_status=schedule_status(),
          description="Re-index files whose content or pipeline config changed since they were indexed.")
def reindex_schedule(context: ScheduleEvaluationContext, data_dir: DataDirResource, milvus: MilvusResource,
                     parsers: ParserResource, llm: LLMResource, text_embedder: TextEmbedderResource,
                     image_embedder: ImageEmbedderResource, whisper: WhisperResource):
    manifest = data_dir.manifest()
    reap_dead_runs(context.instance, context.log.warning)
    fingerprint = pipeline_settings(parsers, llm, text_embedder, image_embedder, whisper).fingerprint()
    stale = stale_partitions(context.instance, manifest, watched_roots(manifest), fingerprint)
    if not stale:
        return SkipReason("nothing stale")
    ordered = context.instance.get_dynamic_partitions(source_files.name)
    tags = dict(LITE_WRITER_TAG) if milvus.is_lite else {}
    return [RunRequest(run_key=f"reindex-{context.scheduled_execution_time}-{start}-{end}",
                       tags={**tags, **range_tags(start, end)})
            for start, end in contiguous_ranges(stale, ordered)]
