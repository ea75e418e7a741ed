"""raw_files: snapshot each source file content-addressed, with its hash, size, mtime and type."""


from dagster import AssetExecutionContext, asset

from mmrag.ids import split_file_key
from mmrag.index.stages import FileOutcome, RawFile, snapshot_file
from mmrag.manifest import Status
from mmrag_assets._meta import outcome_counts, outcome_row, per_file
from mmrag_assets.partitions import source_files
from mmrag_resources.data_dir import DataDirResource


@asset(partitions_def=source_files, io_manager_key="stage_store", group_name="ingest", kinds={"python"},
       description="The source file's bytes, snapshotted under the data dir by sha256, with type detected from content.")
def raw_files(context: AssetExecutionContext, data_dir: DataDirResource) -> dict:
    manifest = data_dir.manifest()
    roots = manifest.sources()
    blobs = data_dir.blobs()
    out: dict[str, RawFile | FileOutcome] = {}
    rows = []
    for key in context.partition_keys:
        source, rel = split_file_key(key)
        if source not in roots:
            out[key] = FileOutcome(key, Status.FAILED, f"source {source!r} is not registered (run `mmrag ingest ROOT --source {source}`)")
        else:
            out[key] = snapshot_file(key, source, roots[source], rel, blobs)
        v = out[key]
        rows.append(outcome_row(key, v) or (key, v.detected.kind, f"{v.size} B sha256 {v.content_hash[:12]} {v.detected.note}"))
    context.add_output_metadata({**outcome_counts(out), **per_file(context, rows)})
    return out
