"""The ingest job: every stage asset for a range of source-file partitions, in one process."""


from dagster import AssetSelection, define_asset_job, in_process_executor

from mmrag.orchestration.planner import LITE_WRITER_TAG
from mmrag_assets.embeddings import embeddings
from mmrag_assets.lightrag_graph import lightrag_graph
from mmrag_assets.milvus_partitions import milvus_partitions
from mmrag_assets.modal_descriptions import modal_descriptions
from mmrag_assets.parsed_blocks import parsed_blocks
from mmrag_assets.partitions import source_files
from mmrag_assets.raw_files import raw_files
from mmrag_assets.retrieval_eval import retrieval_eval

ASSETS = [raw_files, parsed_blocks, modal_descriptions, embeddings, milvus_partitions, lightrag_graph]

# In-process: one process loads each model once for all the files of a run, and Milvus Lite's data
# dir lock (held by the first process that opens it) is never contended inside a run.
ingest_job = define_asset_job(
    "ingest_job", selection=AssetSelection.assets(*ASSETS), partitions_def=source_files,
    executor_def=in_process_executor, description="Index a range of source files through every stage.",
)

# The evaluation reads the index; with Milvus Lite, reading also takes the data dir's lock.
eval_job = define_asset_job(
    "eval_job", selection=AssetSelection.assets(retrieval_eval), executor_def=in_process_executor,
    tags=LITE_WRITER_TAG, description="Page recall@k of the index on an MMLongBench-Doc-style folder.",
)
