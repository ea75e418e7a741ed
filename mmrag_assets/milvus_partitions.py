"""milvus_partitions: each file's rows in the text and image collections (and the page collection when
visual page retrieval is on), replaced idempotently.

Row ids derive from (file key, chunk id, content hash), so re-indexing an unchanged file rewrites
the same ids; a changed file's surplus rows are deleted after the new ones are in. A file that was
skipped or failed keeps whatever rows it had: bad input never costs what is already indexed.

A file whose rows are written is recorded as `indexing`, not `indexed`: it counts as indexed only
when the graph step has committed its contributions too (`lightrag_graph` writes the final status,
handed on as the output's `WrittenFile.outcome`). A run that dies in between leaves the file stale.

Asset check `rows_match_stage_output`, per file written: the ids in Milvus (every collection) are
exactly the ids of the rows this stage produced for this version, none of an older one. A file that
fails it goes no further (no graph step) and is recorded as a transient failure, retried later.
"""

import time

from dagster import AssetExecutionContext, Output, asset

from mmrag.faults import crash_point, plant_point
from mmrag.index.milvus_store import COLLECTIONS, IMAGE, PAGE, TEXT
from mmrag.index.stages import (
    DEGRADED,
    FileOutcome,
    WrittenFile,
    milvus_rows,
    page_rows,
)
from mmrag.manifest import TRANSIENT, FileRecord, Status, record_outcome
from mmrag_assets._checks import MILVUS_CHECK, evaluations, spec
from mmrag_assets._meta import outcome_counts, per_file
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
       check_specs=[spec("milvus_partitions", MILVUS_CHECK, "The file's Milvus rows are exactly the rows this stage "
                         "produced for its version: none missing, none of an older version.")],
       description="The file's rows in the Milvus text and image collections (partition key: source).")
def milvus_partitions(context: AssetExecutionContext, embeddings: dict, milvus: MilvusResource,
                      data_dir: DataDirResource, parsers: ParserResource, llm: LLMResource,
                      text_embedder: TextEmbedderResource, image_embedder: ImageEmbedderResource,
                      whisper: WhisperResource):
    settings = pipeline_settings(parsers, llm, text_embedder, image_embedder, whisper)
    fingerprint, now = settings.fingerprint(), time.time()
    manifest = data_dir.manifest()
    roots = manifest.sources()
    store = None  # opened for the first file with rows (the embedders' dims are known by then)
    out, rows, expected = {}, [], {}
    page_dim = 0  # the page collection, checked for the first file with page rows
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
        pages = page_rows(emb)
        if store is None:
            image = image_embedder.embedder()
            store = milvus.index(text_embedder.embedder(llm.client()).dim, image.dim if image.enabled else None)
        if pages and not page_dim:
            page_dim = len(pages[0].vector)
            store.ensure_pages(page_dim)
        t = store.replace_file(TEXT, key, text_rows)
        i = store.replace_file(IMAGE, key, image_rows) if store.has(IMAGE) else {"upserted": 0, "deleted": 0}
        store.replace_file(PAGE, key, pages)  # (no collection: nothing; turned off: earlier page rows go)
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
        plant_point("milvus", key, store)
        expected[key] = ({TEXT: {r.id for r in text_rows}, IMAGE: {r.id for r in image_rows},
                          PAGE: {r.id for r in pages}}, rec)
        out[key] = WrittenFile(True, commit, prior, len(text_rows), len(image_rows))
        rows.append((key, commit.status, f"{len(text_rows)} text rows ({t['deleted']} stale removed), "
                                         f"{len(image_rows)} image rows ({i['deleted']} stale removed)"
                                         + (f", {len(pages)} page rows" if pages else "")))
    if store is not None:
        store.flush()
    checks, t_check = {}, time.perf_counter()
    for key, (want, rec) in expected.items():
        passed, why = rows_match(store, key, want)
        checks[key] = (passed, why, {f"{m}_rows": len(ids) for m, ids in want.items() if ids or m != PAGE})
        if not passed:  # kept from the graph step; the next sync writes it again
            context.log.error(f"{key}: {why}")
            outcome = record_outcome(Status.FAILED, f"milvus check: {why}", kind=TRANSIENT, now=now,
                                     prior=out[key].prior_transient, backoff=settings.retry_at)
            manifest.upsert(rec.record(outcome))
            out[key] = WrittenFile(False, outcome)
    uri = milvus.settings().resolved_milvus_uri
    yield Output(out, metadata={
        **outcome_counts(embeddings), "uri": uri if not milvus.is_lite else f"Milvus Lite: {uri}",
        "fingerprint": fingerprint, "check_seconds": round(time.perf_counter() - t_check, 3), **per_file(context, rows),
    })
    yield from evaluations("milvus_partitions", MILVUS_CHECK, checks)


def rows_match(store, key: str, want: dict[str, set[str]]) -> tuple[bool, str]:
    """Whether the file's ids in every collection are exactly the wanted ones, and how not."""
    why = []
    for modality in COLLECTIONS:
        ids = want.get(modality, set())
        have = set(store.ids_for_file(modality, key)) if store.has(modality) else set()
        if missing := ids - have:
            why.append(f"{len(missing)} of {len(ids)} {modality} rows missing")
        if extra := have - ids:
            why.append(f"{len(extra)} {modality} rows of another version")
    if why:
        return False, "; ".join(why)
    pages = f" and {len(want[PAGE])} page" if want.get(PAGE) else ""
    return True, f"{len(want[TEXT])} text, {len(want[IMAGE])} image{pages} rows, exactly this version's"
