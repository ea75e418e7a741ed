"""The one Definitions object that workspace.yaml loads. Every resource resolves its unset fields
from MMRAG_* variables when a run starts; only the sensor's interval and whether the sensor and the
schedule start switched on (MMRAG_SENSOR_INTERVAL_S, MMRAG_AUTOMATION: `mmrag up` sets them) are read
when the definitions load."""

from __future__ import annotations

from dagster import Definitions

from mmrag.faults import fail_point
from mmrag.orchestration.runs import patch_claim_polling
from mmrag_assets.cleanup import cleanup_job
from mmrag_assets.index_audit import audit_job, audit_schedule, index_audit
from mmrag_assets.jobs import ASSETS, eval_job, ingest_job
from mmrag_assets.maintenance import maintenance_job
from mmrag_assets.retrieval_eval import retrieval_eval
from mmrag_resources.data_dir import DataDirResource
from mmrag_resources.embedders import ImageEmbedderResource, TextEmbedderResource
from mmrag_resources.lightrag import LightRAGResource
from mmrag_resources.llm import LLMResource
from mmrag_resources.milvus import MilvusResource
from mmrag_resources.parsers import ParserResource
from mmrag_resources.stage_store import StageStore
from mmrag_resources.whisper import WhisperResource
from schedules.maintenance import maintenance_schedule
from schedules.reindex import reindex_schedule
from schedules.sensors import watch_folders

fail_point("definitions")  # tests: a code location that fails to load (`mmrag up` must say so)
patch_claim_polling()  # Dagster 1.13's in-process executor would spin while a step waits for a slot


def default_resources() -> dict:
    return {
        "data_dir": DataDirResource(),
        "stage_store": StageStore(),
        "milvus": MilvusResource(),
        "llm": LLMResource(),
        "text_embedder": TextEmbedderResource(),
        "image_embedder": ImageEmbedderResource(),
        "parsers": ParserResource(),
        "lightrag": LightRAGResource(),
        "whisper": WhisperResource(),
    }


defs = Definitions(
    assets=[*ASSETS, retrieval_eval, index_audit],
    jobs=[ingest_job, cleanup_job, eval_job, audit_job, maintenance_job],
    sensors=[watch_folders],
    schedules=[reindex_schedule, audit_schedule, maintenance_schedule],
    resources=default_resources(),
)
