"""parsed_blocks: each file as typed content blocks (Docling, pypdfium2 + Tesseract, MinerU)."""


import threading

from dagster import AssetExecutionContext, asset

from mmrag.faults import crash_point
from mmrag.index.stages import FileOutcome, parse_stage
from mmrag_assets._meta import outcome_counts, outcome_row, per_file
from mmrag_assets.partitions import source_files
from mmrag_resources.data_dir import DataDirResource
from mmrag_resources.embedders import ImageEmbedderResource, TextEmbedderResource
from mmrag_resources.parsers import ParserResource
from mmrag_resources.whisper import WhisperResource


@asset(partitions_def=source_files, io_manager_key="stage_store", group_name="ingest", kinds={"docling"},
       description="Typed content blocks (text, title, table, image, equation, code, timed transcript) with "
                   "page, order, bbox or time range, caption; exportable as RAG-Anything's content_list. "
                   "Parser and version in the metadata.")
def parsed_blocks(context: AssetExecutionContext, raw_files: dict, parsers: ParserResource,
                  whisper: WhisperResource, data_dir: DataDirResource, text_embedder: TextEmbedderResource,
                  image_embedder: ImageEmbedderResource) -> dict:
    blobs = data_dir.blobs()
    out, rows = {}, []
    # One supervised parse worker for the run (models load once); a file over a limit is stopped and
    # fails with the reason, the worker is replaced for the next file (README, Bad inputs).
    with parsers.supervisor(blobs, whisper) as supervisor:
        if any(not isinstance(raw_files[key], FileOutcome) for key in context.partition_keys):
            threading.Thread(target=_warm_up_while_parsing, args=(text_embedder, image_embedder),
                             name="mmrag-warm-up", daemon=True).start()
        for key in context.partition_keys:
            doc = parse_stage(raw_files[key], supervisor.parse)
            crash_point("parse")
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
    context.add_output_metadata({**outcome_counts(out), **per_file(context, rows)})
    return out


def _warm_up_while_parsing(text_embedder: TextEmbedderResource, image_embedder: ImageEmbedderResource) -> None:
    """This process only waits while the worker parses: load the models the embeddings step needs
    meanwhile (torch, sentence-transformers, the text model, CLIP; 50 office files: 3.3 s of the
    step's wall, and 9 s of imports that step would wait for). Models load once per process, so the
    step finds them loaded, or waits for this load. A failure here is the step's to report."""
    try:
        if text_embedder.settings().text_embed_backend == "sentence-transformers":
            text_embedder.embedder(cached=False).dim  # loads the model
        image_embedder.embedder(cached=False).enabled  # loads CLIP, or notes why not
    except Exception:  # noqa: BLE001
        pass
