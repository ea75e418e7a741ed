"""retrieval_eval: page recall@1/5/10 of the index on an MMLongBench-Doc-style folder, with a plot.

The folder's `documents/` must be indexed under the configured source first (`mmrag eval DIR` does
both; or `mmrag ingest DIR/documents --source eval-NAME`, or a watched folder). The asset reads the
index only; it runs in `eval_job`, which carries the Milvus Lite tag because a Lite data dir admits
one process at a time.
"""

import os
from pathlib import Path

from dagster import (
    AssetExecutionContext,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from mmrag.manifest import IN_INDEX
from mmrag.retrieval.evaluation import (
    KS,
    evaluate,
    load_samples,
    plot_recall,
    recall_table,
)
from mmrag_resources.data_dir import DataDirResource
from mmrag_resources.embedders import TextEmbedderResource
from mmrag_resources.llm import LLMResource
from mmrag_resources.milvus import MilvusResource


class EvalConfig(Config):
    eval_dir: str = ""  # default: MMRAG_EVAL_DIR
    source: str = ""  # default: eval-<folder name>, as `mmrag eval` names it
    text_search: str = "hybrid"  # hybrid | dense | bm25


@asset(group_name="evaluation", kinds={"python"},
       description="Page recall@1/5/10 (overall and per evidence source) on an MMLongBench-Doc-style folder "
                   "(documents/ + samples.jsonl), a recall@k plot and, with an LLM, the share of "
                   "not-answerable questions it declines.")
def retrieval_eval(context: AssetExecutionContext, config: EvalConfig, data_dir: DataDirResource,
                   milvus: MilvusResource, text_embedder: TextEmbedderResource, llm: LLMResource) -> MaterializeResult:
    folder = Path(config.eval_dir or os.environ.get("MMRAG_EVAL_DIR", "")).expanduser()
    if not str(folder) or not (folder / "samples.jsonl").is_file():
        raise Failure(f"eval_dir {str(folder)!r} has no samples.jsonl: set the asset's eval_dir config or MMRAG_EVAL_DIR")
    source = config.source or f"eval-{folder.resolve().name}"
    wanted = {f"{source}:{s.doc_id}" for s in load_samples(folder)}
    indexed = {r.file_key for r in data_dir.manifest().all(source) if r.status in IN_INDEX}
    if missing := sorted(wanted - indexed):
        raise Failure(f"{len(missing)} of {len(wanted)} documents are not indexed under source {source!r} "
                      f"(first: {missing[0]}): run `mmrag eval {folder}` or `mmrag ingest {folder / 'documents'} "
                      f"--source {source}` first")
    settings = milvus.settings()
    res = evaluate(settings, folder, source, text_search=config.text_search, llm=llm.client(),
                   text_embedder=text_embedder.embedder(cached=False))
    plot = plot_recall(res, data_dir.path / "eval" / f"{source}-recall.png")
    context.log.info(f"{source}: " + ", ".join(f"recall@{k} {res[f'recall@{k}']}" for k in KS))
    na = res["not_answerable"]
    return MaterializeResult(metadata={
        **{f"recall@{k}": MetadataValue.float(float(res[f"recall@{k}"] or 0.0)) for k in KS},
        "questions": res["questions"], "documents": res["documents"], "text_search": config.text_search,
        "table": MetadataValue.md(recall_table(res)), "plot": MetadataValue.path(str(plot)),
        "by_source": MetadataValue.json(res["by_source"]),
        "not_answerable_recognised": MetadataValue.text(
            f"{na['recognised']}/{na['n']}" if na["recognised"] is not None else f"n/a ({na['note']})"),
        "latency_ms_p50": MetadataValue.float(float(res["latency_ms_p50"] or 0.0)),
    })
