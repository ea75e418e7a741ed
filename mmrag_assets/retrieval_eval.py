"""retrieval_eval: page recall@1/5/10 of the index on an MMLongBench-Doc-style folder, with a plot.

The folder's `documents/` must be indexed under the configured source first (`mmrag eval DIR` does
both; or `mmrag ingest DIR/documents --source eval-NAME`, or a watched folder). The asset reads the
index only; it runs in `eval_job`, which carries the Milvus Lite tag because a Lite data dir admits
one process at a time.

Its asset check `recall_at_5` is the gate: it fails (severity ERROR) when recall@5 is under the
floor (`recall_at_5_floor`, default `MMRAG_EVAL_RECALL5_FLOOR` or 0) or more than `max_drop` under
the previous evaluation of the same source.
"""

import os
from pathlib import Path

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
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
    recall_at_5_floor: float = -1.0  # the gate's floor; below 0: MMRAG_EVAL_RECALL5_FLOOR, else 0
    max_drop: float = 0.02  # the gate fails when recall@5 falls more than this under the last evaluation


def recall_gate(recall5: float, floor: float, previous: float | None, max_drop: float) -> tuple[bool, str]:
    """(passed, why) of the recall@5 gate: at least the floor, and not more than max_drop under the last run."""
    why = []
    if recall5 < floor:
        why.append(f"recall@5 {recall5:.3f} is under the floor {floor:.3f}")
    if previous is not None and recall5 < previous - max_drop:
        why.append(f"recall@5 dropped from {previous:.3f} to {recall5:.3f} (more than {max_drop:.3f})")
    if why:
        return False, "; ".join(why)
    return True, (f"recall@5 {recall5:.3f} ≥ floor {floor:.3f}"
                  + (f", previous {previous:.3f}" if previous is not None else ", no previous evaluation"))


def _previous_recall5(context: AssetExecutionContext, source: str) -> float | None:
    """recall@5 of the last materialization of this asset for the same source, if any."""
    event = context.instance.get_latest_materialization_event(AssetKey("retrieval_eval"))
    mat = event.asset_materialization if event else None
    if mat is None:
        return None
    meta = mat.metadata
    if "source" not in meta or meta["source"].value != source or "recall@5" not in meta:
        return None
    return float(meta["recall@5"].value)


@asset(group_name="evaluation", kinds={"python"},
       check_specs=[AssetCheckSpec("recall_at_5", asset="retrieval_eval",
                                   description="recall@5 at least the floor and not dropped from the last evaluation")],
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
    recall5 = float(res["recall@5"] or 0.0)
    floor = config.recall_at_5_floor if config.recall_at_5_floor >= 0 else float(
        os.environ.get("MMRAG_EVAL_RECALL5_FLOOR") or 0.0)
    previous = _previous_recall5(context, source)
    passed, why = recall_gate(recall5, floor, previous, config.max_drop)
    check = AssetCheckResult(check_name="recall_at_5", passed=passed, severity=AssetCheckSeverity.ERROR,
                             description=why, metadata={
                                 "recall@5": recall5, "floor": floor, "max_drop": config.max_drop,
                                 "previous": MetadataValue.float(previous) if previous is not None else "none"})
    return MaterializeResult(check_results=[check], metadata={
        "source": source,
        **{f"recall@{k}": MetadataValue.float(float(res[f"recall@{k}"] or 0.0)) for k in KS},
        "questions": res["questions"], "documents": res["documents"], "text_search": config.text_search,
        "table": MetadataValue.md(recall_table(res)), "plot": MetadataValue.path(str(plot)),
        "by_source": MetadataValue.json(res["by_source"]),
        "not_answerable_recognised": MetadataValue.text(
            f"{na['recognised']}/{na['n']}" if na["recognised"] is not None else f"n/a ({na['note']})"),
        "latency_ms_p50": MetadataValue.float(float(res["latency_ms_p50"] or 0.0)),
        "rerank": MetadataValue.json(res["rerank"]) if res.get("rerank") else "off",
    })
