"""The per-file asset checks of the index stages, recorded for each partition of a run.

Dagster 1.13 attaches an `AssetCheckResult` to a run's one partition only, and an ingest run covers a
range of files; so the stage yields one `AssetCheckEvaluation` per file with its partition, then the
check's output once. The checks are not blocking in Dagster's sense (that would stop every file of
the run): the stage itself keeps a file that fails from what comes after, and records it as a
transient failure, retried by the next sync.
"""

from __future__ import annotations

import warnings

from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    Output,
)

from mmrag_assets.partitions import source_files

MILVUS_CHECK = "rows_match_stage_output"
GRAPH_CHECK = "graph_refs_resolve"


def spec(asset: str, name: str, description: str) -> AssetCheckSpec:
    """A per-partition check spec. Dagster 1.13 marks `partitions_def` on a check as a preview (a
    PreviewWarning on every load of the definitions): that one warning is silenced here, on purpose."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*partitions_def on an AssetCheckSpec.*")
        return AssetCheckSpec(name, asset=asset, partitions_def=source_files, description=description)


def evaluations(asset: str, name: str, results: dict[str, tuple[bool, str, dict]]):
    """Yield the per-file evaluations, then the check's (empty) output."""
    for key, (passed, description, metadata) in results.items():
        yield AssetCheckEvaluation(asset_key=AssetKey(asset), check_name=name, passed=passed,
                                   severity=AssetCheckSeverity.ERROR, description=description[:1000],
                                   metadata=metadata, partition=key, blocking=False)
    yield Output(None, output_name=f"{asset}_{name}")
