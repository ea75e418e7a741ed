"""milvus_partitions: each file's rows in the text and image collections, replaced idempotently.

Row ids derive from (file key, chunk id, content hash), so re-indexing an unchanged file rewrites
the same ids; a changed file's surplus rows are deleted after the new ones are in. A file that was
skipped or failed keeps whatever rows it had: bad input never costs what is already indexed.

A file whose rows are written is recorded as `indexing`, not `indexed`: it counts as indexed only
when the graph step has committed its contributions too (`lightrag_graph` writes the final status,
handed on as the output's `WrittenFile.outcome`). A run that dies in between leaves the file stale.
"""

import time

from dagster import AssetExecutionContext, asset

from mmrag.faults import crash_point
from mmrag.index.milvus_store import IMAGE, TEXT
from mmrag.index.stages import DEGRADED, FileOutcome, WrittenFile, milvus_rows
from mmrag.manifest import FileRecord, Status, record_outcome
from mmrag_assets._meta import files_table, outcome_counts
from mmrag_assets.partitions import source_files
from mmrag_resources._settings import pipeline_settings
from mmrag_resources.data_dir import DataDirResource
from mmrag_resources.embedders import ImageEmbedderResource, TextEmbedderResource
from mmrag_resources.llm import LLMResource
from mmrag_resources.milvus import MilvusResource
from mmrag_resources.parsers import ParserResource
from mmrag_resources.whisper import WhisperResource


@asset(partitions_def=source_files, io_manager_key="stage_store", group_name="index", kinds={"milvus"},
       pool="mmrag_index",
       description="The file's rows in the Milvus text and image collections (partition key: source).")
def milvus_partitions(context: AssetExecutionContext, embeddings: dict, milvus: MilvusResource,
                      data_dir: DataDirResource, parsers: ParserResource, llm: LLMResource,
                      text_embedder: TextEmbedderResource, image_embedder: ImageEmbedderResource,
                      whisper: WhisperResource) -> dict:
    settings = pipeline_settings(parsers, llm, text_embedder, image_embedder, whisper)
    fingerprint, now = settings.fingerprint(), time.time()
    manifest = data_dir.manifest()
    roots = manifest.sources()
    store = None  # opened for the first file with rows (the embedders' dims are known by then)
    out, rows = {}, []
    for key in context.partition_keys:
        emb = embeddings[key]
        source, _, rel = key.partition(":")
        rec = manifest.get(key) or FileRecord(key, source, roots.get(source, ""), rel)
        if isinstance(emb, FileOutcome):
            outcome = record_outcome(emb.status, emb.reason, kind=emb.failure_kind, now=now, backoff=settings.retry_at,
                                     prior=rec.transient_streak(emb.content_hash))
            rec.record(outcome)
            rec.content_hash, rec.size, rec.mtime = emb.content_hash, emb.size, emb.mtime
            rec.fingerprint = fingerprint
            manifest.upsert(rec)
            out[key] = WrittenFile(False, outcome)
            rows.append((key, emb.status, emb.reason + (f" (kept {rec.text_rows} existing rows)" if rec.text_rows else "")))
            continue
        text_rows, image_rows = milvus_rows(emb)
        if store is None:
            image = image_embedder.embedder()
            store = milvus.index(text_embedder.embedder(llm.client()).dim, image.dim if image.enabled else None)
        t = store.replace_file(TEXT, key, text_rows)
        i = store.replace_file(IMAGE, key, image_rows) if store.has(IMAGE) else {"upserted": 0, "deleted": 0}
        raw = emb.raw
        rec.root = raw.root
        # partial = indexed with extractive descriptions after model errors: a transient failure
        # too, retried with the backoff that doubles with each one in a row on this content
        degraded = any(w.startswith(DEGRADED) for w in emb.doc.warnings)
        prior = rec.transient_streak(raw.content_hash)
        commit = record_outcome(Status.PARTIAL if degraded else Status.INDEXED, prior=prior, now=now,
                                backoff=settings.retry_at)
        rec.content_hash, rec.size, rec.mtime, rec.mime = raw.content_hash, raw.size, raw.mtime, emb.doc.mime
        rec.status = Status.INDEXING  # until the graph step commits
        rec.reason = "; ".join(emb.notes + emb.doc.warnings)[:2000] or None
        rec.fingerprint, rec.parser = fingerprint, f"{emb.doc.parser} {emb.doc.parser_version}"
        rec.text_rows, rec.image_rows = len(text_rows), len(image_rows)
        manifest.upsert(rec)
        crash_point("milvus")
        out[key] = WrittenFile(True, commit, prior, len(text_rows), len(image_rows))
        rows.append((key, commit.status, f"{len(text_rows)} text rows ({t['deleted']} stale removed), "
                                         f"{len(image_rows)} image rows ({i['deleted']} stale removed)"))
    if store is not None:
        store.flush()
    uri = milvus.settings().resolved_milvus_uri
    context.add_output_metadata({
        **outcome_counts(embeddings), "uri": uri if not milvus.is_lite else f"Milvus Lite: {uri}",
        "fingerprint": fingerprint, "per_file": files_table(rows),
    })
    return out
