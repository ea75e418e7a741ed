"""parsed_blocks: each file as typed content blocks (Docling, pypdfium2 + Tesseract, MinerU)."""


from dagster import AssetExecutionContext, asset

from mmrag.stages import parse_stage
from mmrag_assets._meta import files_table, outcome_counts, outcome_row
from mmrag_assets.partitions import source_files
from mmrag_resources.data_dir import DataDirResource
from mmrag_resources.parsers import ParserResource
from mmrag_resources.whisper import WhisperResource


@asset(partitions_def=source_files, io_manager_key="stage_store", group_name="ingest", kinds={"docling"},
       description="Typed content blocks (text, title, table, image, equation, code, timed transcript) with "
                   "page, order, bbox or time range, caption; exportable as RAG-Anything's content_list. "
                   "Parser and version in the metadata.")
def parsed_blocks(context: AssetExecutionContext, raw_files: dict, parsers: ParserResource,
                  whisper: WhisperResource, data_dir: DataDirResource) -> dict:
    blobs = data_dir.blobs()
    transcriber = whisper.transcriber()
    out, rows = {}, []
    for key in context.partition_keys:
        doc = parse_stage(raw_files[key], lambda path, det, **ident: parsers.parse(path, det, blobs,
                                                                                   transcriber=transcriber, **ident))
        out[key] = doc
        if (row := outcome_row(key, doc)) is None:
            kinds: dict[str, int] = {}
            for b in doc.blocks:
                kinds[b.kind.value] = kinds.get(b.kind.value, 0) + 1
            detail = f"{doc.parser} {doc.parser_version}: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
            if doc.warnings:
                detail += f"; warnings: {'; '.join(doc.warnings)[:150]}"
            row = (key, "parsed", detail)
        else:
            context.log.warning(f"{key}: {row[1]}: {row[2]}")
        rows.append(row)
    context.add_output_metadata({**outcome_counts(out), "per_file": files_table(rows)})
    return out
