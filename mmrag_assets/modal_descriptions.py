"""modal_descriptions: every image, table and equation described by the VLM/LLM, with its context.

Cached by (block content hash, model, prompt version): an unchanged block makes no model call.
Without an LLM, descriptions are extractive (caption, OCR text, Markdown table, LaTeX, nearby
text) and marked `description_source="extractive"`.
"""


from dagster import AssetExecutionContext, asset

from mmrag.faults import crash_point
from mmrag.index.describe import describe_documents
from mmrag.index.stages import DEGRADED
from mmrag.models import usage
from mmrag_assets._meta import outcome_counts, outcome_row, per_file, report_usage
from mmrag_assets.partitions import source_files
from mmrag_resources.data_dir import DataDirResource
from mmrag_resources.llm import LLMResource


@asset(partitions_def=source_files, io_manager_key="stage_store", group_name="ingest", kinds={"openai"},
       pool="mmrag_llm",
       description="Parsed blocks whose images, tables and equations carry a VLM/LLM (or extractive) description.")
def modal_descriptions(context: AssetExecutionContext, parsed_blocks: dict, llm: LLMResource,
                       data_dir: DataDirResource) -> dict:
    client = llm.client()
    cache = data_dir.manifest()
    rows, totals = [], {"llm_calls": 0, "cache_hits": 0, "extractive": 0, "modal_blocks": 0}
    todo = []
    for key in context.partition_keys:
        doc = parsed_blocks[key]
        if (row := outcome_row(key, doc)) is not None:
            rows.append(row)
        else:
            todo.append((key, doc))
    # every file's requests in one pool: the run's in-flight budget is the client's concurrency
    with usage.metered() as meter:
        try:
            described = describe_documents([doc for _, doc in todo], client, cache, log=context.log)
        finally:
            spent = report_usage(context, meter, cache)
    for key, doc in todo:
        stats = described[doc.file_key]
        crash_point("describe")
        totals["llm_calls"] += stats.llm_calls
        totals["cache_hits"] += stats.cache_hits
        totals["extractive"] += stats.extractive
        totals["modal_blocks"] += stats.blocks
        detail = f"{stats.blocks} modal: {stats.llm_calls} model calls, {stats.cache_hits} cached, {stats.extractive} extractive"
        if stats.errors:
            detail += f"; errors: {'; '.join(stats.errors)[:150]}"
            doc.warnings.append(f"{DEGRADED}{len(stats.errors)} descriptions are extractive after model errors "
                                f"({stats.errors[0][:200]})")
        rows.append((key, "described", detail))
    context.add_output_metadata({
        **outcome_counts(parsed_blocks), **totals,
        "model": client.vlm_model if client else "none (extractive)",
        **spent, **per_file(context, rows),
    })
    return dict(parsed_blocks)
