"""embeddings: chunks and descriptions → the text embedder; images → CLIP (when its weights load)."""


from dagster import AssetExecutionContext, asset

from mmrag.index.stages import embed_stage
from mmrag.models import factory, usage
from mmrag_assets._meta import outcome_counts, outcome_row, per_file, report_usage
from mmrag_assets.partitions import source_files
from mmrag_resources.data_dir import DataDirResource
from mmrag_resources.embedders import ImageEmbedderResource, TextEmbedderResource
from mmrag_resources.llm import LLMResource


@asset(partitions_def=source_files, io_manager_key="stage_store", group_name="ingest", kinds={"pytorch"},
       description="Text chunks with lineage and their vectors; image vectors from CLIP.")
def embeddings(context: AssetExecutionContext, modal_descriptions: dict, raw_files: dict,
               text_embedder: TextEmbedderResource, image_embedder: ImageEmbedderResource,
               llm: LLMResource, data_dir: DataDirResource) -> dict:
    s = text_embedder.settings()
    text = text_embedder.embedder(llm.client())
    image = image_embedder.embedder()
    page = factory.page_embedder(s)  # visual page retrieval: off unless MMRAG_PAGE_EMBED_MODEL is set
    out, rows = {}, []
    with usage.metered() as meter:  # served embedders' requests (a local model's use no server)
        try:
            for key in context.partition_keys:
                with usage.for_file(key):
                    out[key] = emb = embed_stage(modal_descriptions[key], raw_files[key], text, image, s.chunk_size,
                                                 s.chunk_overlap, s.transcript_window_s, page, s.page_dpi)
                if (row := outcome_row(key, emb)) is None:
                    n_img = 0 if emb.image_vectors is None else len(emb.image_vectors)
                    pages = f", {len(emb.page_chunks)} page images" if emb.page_vectors is not None else ""
                    row = (key, "embedded", f"{len(emb.chunks)} text chunks, {n_img} images{pages}"
                           + "".join(f"; {n}" for n in emb.notes))
                rows.append(row)
        finally:
            spent = report_usage(context, meter, data_dir.manifest())
    try:
        image_model = f"{image.model_name}/{image.pretrained}" if image.enabled else f"off: {image.disabled_reason}"
    except Exception as e:  # noqa: BLE001 - the embedding service is unreachable: its files failed above
        image_model = f"unknown: {type(e).__name__}: {e}"
    context.add_output_metadata({
        **outcome_counts(out), "text_model": text.model_name, "image_model": image_model,
        "page_model": f"{page.model} at {page.where}" if page else "off",
        **spent, **per_file(context, rows),
    })
    return out
