"""reindex_schedule: daily, re-materialize the partitions that are stale.

Stale = the content changed since it was indexed, or the pipeline's config fingerprint (parser,
models, prompt version, chunking) differs from the one recorded, or a run died before the file's
graph step committed, or the last attempt failed transiently and its backoff has passed (a failure
tied to the content waits for new content or config).
Unchanged files are not touched, so a no-change day costs one scan.
"""


from dagster import RunRequest, ScheduleEvaluationContext, SkipReason, schedule

from mmrag.orchestration.planner import Survey, ingest_runs, survey
from mmrag.sources.sync import scan_root
from mmrag_assets.jobs import ingest_job
from mmrag_resources._settings import pipeline_settings
from mmrag_resources.data_dir import DataDirResource
from mmrag_resources.embedders import ImageEmbedderResource, TextEmbedderResource
from mmrag_resources.llm import LLMResource
from mmrag_resources.milvus import MilvusResource
from mmrag_resources.parsers import ParserResource
from mmrag_resources.whisper import WhisperResource
from schedules.watch import schedule_status, watched_roots


def stale_partitions(found: Survey) -> list[str]:
    """The files of the survey to re-index: content or config changed, or a retry is due."""
    return [k for _, plan in found.plans for k in plan.changed + plan.stale if k in found.partitions]


@schedule(name="reindex_schedule", cron_schedule="0 3 * * *", job=ingest_job, default_status=schedule_status(),
          description="Re-index files whose content or pipeline config changed since they were indexed.")
def reindex_schedule(context: ScheduleEvaluationContext, data_dir: DataDirResource, milvus: MilvusResource,
                     parsers: ParserResource, llm: LLMResource, text_embedder: TextEmbedderResource,
                     image_embedder: ImageEmbedderResource, whisper: WhisperResource):
    manifest = data_dir.manifest()
    roots = watched_roots(manifest)
    fingerprint = pipeline_settings(parsers, llm, text_embedder, image_embedder, whisper).fingerprint()
    found = survey(context.instance, manifest, [scan_root(root, source) for source, root in sorted(roots.items())],
                   fingerprint=fingerprint, log=context.log.warning)
    stale = stale_partitions(found)
    if not stale:
        return SkipReason("nothing stale")
    return [RunRequest(run_key=f"reindex-{context.scheduled_execution_time}-{run.keys[0]}-{run.keys[-1]}", tags=run.tags)
            for run in ingest_runs(stale, found.ordered, lite=milvus.is_lite)]
