"""What each stage does to one file, without Dagster: the assets call these once per partition.

Every stage passes a `FileOutcome` through untouched, so a file that was skipped or failed early
reaches the index stage, which records the outcome and leaves the file's existing rows alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmrag.blocks import PIPELINE_VERSION, BlockKind, ParsedDocument
from mmrag.ids import image_ref, row_id
from mmrag.index.chunking import Chunk, chunk_document
from mmrag.manifest import CONTENT, TRANSIENT, FailureKind, Outcome, Status
from mmrag.sources.blobs import BlobStore
from mmrag.sources.filetypes import Detected, detect

# A warning with this prefix marks a file indexed with extractive descriptions because the model
# server failed: it is recorded as `Status.PARTIAL` and the schedule retries it.
DEGRADED = "degraded: "


@dataclass
class FileOutcome:
    """A file that is not (re)indexed by this run, and why."""

    file_key: str
    status: Status  # SKIPPED | FAILED
    reason: str
    content_hash: str | None = None
    size: int | None = None
    mtime: float | None = None
    failure_kind: FailureKind = CONTENT  # CONTENT: redone when the bytes or config change; TRANSIENT: retried


@dataclass
class RawFile:
    file_key: str
    source: str
    root: str
    rel_path: str
    snapshot: str  # content-addressed copy under the data dir
    content_hash: str
    size: int
    mtime: float
    detected: Detected
    sidecars: list[tuple[str, str, str]] = field(default_factory=list)  # subtitles: (rel, snapshot, tag)


@dataclass
class WrittenFile:
    """What `milvus_partitions` hands `lightrag_graph` for one file: whether this run wrote its rows,
    and the outcome the graph step's commit records for it (`Outcome`; until then the file is
    `indexing`)."""

    written: bool
    outcome: Outcome  # written: INDEXED or PARTIAL, to commit; not written: what was recorded
    prior_transient: int = 0  # transient failures in a row on this content before this run
    text_rows: int = 0
    image_rows: int = 0


@dataclass
class EmbeddedFile:
    doc: ParsedDocument
    raw: RawFile
    chunks: list[Chunk]
    text_vectors: np.ndarray
    image_chunks: list[Chunk] = field(default_factory=list)
    image_vectors: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    page_chunks: list[Chunk] = field(default_factory=list)  # rendered PDF pages (visual page retrieval)
    page_vectors: np.ndarray | None = None


def snapshot_file(file_key: str, source: str, root: str, rel_path: str, blobs: BlobStore) -> RawFile | FileOutcome:
    from mmrag.sources.roots import OutsideRoot, open_source

    path = Path(root) / rel_path
    try:
        fin = open_source(root, rel_path)  # the same rules as the scan, checked again at the read
        st = os.fstat(fin.fileno())
        digest, size, stored, head = blobs.put_file(path, fin=fin)
    except FileNotFoundError:
        return FileOutcome(file_key, Status.SKIPPED, "the file no longer exists")
    except OutsideRoot as e:
        return FileOutcome(file_key, Status.SKIPPED, str(e))
    except PermissionError as e:
        return FileOutcome(file_key, Status.FAILED, f"cannot read the file: {e}")
    # Detect from the snapshot with the source's name, so the extension still informs the type.
    detected = detect(Path(rel_path), head)
    sidecars: list[tuple[str, str, str]] = []
    if detected.kind in ("audio", "video", "subtitles"):
        from mmrag.parsing.subtitles import pair_sidecars, sidecar_tag

        # Only names that share the first dot-separated part can pair (`talk.en.vtt` ~ `talk.mp4`).
        first = path.name.split(".")[0]
        folder = Path(rel_path).parent
        with os.scandir(path.parent) as entries:
            siblings = sorted((folder / e.name).as_posix() for e in entries
                              if e.name.split(".")[0] == first and e.is_file())
        paired = pair_sidecars(siblings).get(Path(rel_path).as_posix(), [])
        if detected.kind == "subtitles" and paired:
            return FileOutcome(file_key, Status.SKIPPED, f"sidecar subtitles of {', '.join(paired)}: indexed as its transcript",
                               digest, size, st.st_mtime)
        for sub in paired if detected.kind != "subtitles" else []:
            try:
                stored_sub = blobs.put_file(Path(root) / sub, fin=open_source(root, sub))[2]
                sidecars.append((sub, str(stored_sub), sidecar_tag(sub, rel_path)))
            except OSError:
                continue  # gone since the listing: the next sync re-plans this file
    return RawFile(file_key, source, root, rel_path, str(stored), digest, size, st.st_mtime, detected, sidecars)


def parse_stage(raw: RawFile | FileOutcome, parse) -> ParsedDocument | FileOutcome:
    """`parse(path, detected, **ident)` is the parser resource's `parse`."""
    from mmrag.parsing import ParseError, SkipFile

    if isinstance(raw, FileOutcome):
        return raw
    meta = dict(content_hash=raw.content_hash, size=raw.size, mtime=raw.mtime)
    try:
        return parse(Path(raw.snapshot), raw.detected, file_key=raw.file_key, source=raw.source,
                     rel_path=raw.rel_path, content_hash=raw.content_hash, sidecars=raw.sidecars)
    except SkipFile as e:
        return FileOutcome(raw.file_key, Status.SKIPPED, str(e), **meta)
    except ParseError as e:
        return FileOutcome(raw.file_key, Status.FAILED, str(e), **meta,
                           failure_kind=TRANSIENT if getattr(e, "transient", False) else CONTENT)
    except Exception as e:  # a parser bug on one file must not stop the other files of the run
        return FileOutcome(raw.file_key, Status.FAILED, f"parser crashed: {type(e).__name__}: {e}", **meta)


def embed_stage(doc: ParsedDocument | FileOutcome, raw: RawFile | FileOutcome, text_embedder, image_embedder,
                chunk_size: int, chunk_overlap: int, window_s: float = 45.0, page_embedder=None,
                page_dpi: int = 96) -> EmbeddedFile | FileOutcome:
    """Chunks and their vectors, the pictures' CLIP vectors, and with `page_embedder` (visual page
    retrieval, `mmrag.models.page_embed`) one vector per rendered page of a PDF."""
    if isinstance(doc, FileOutcome):
        return doc
    chunks = chunk_document(doc, chunk_size, chunk_overlap, window_s)
    try:
        vectors, image_chunks, image_vectors, notes = _embed(doc, chunks, text_embedder, image_embedder)
        page_chunks, page_vectors = _embed_pages(doc, raw, page_embedder, page_dpi)
    except Exception as e:  # one file's failure must not stop the run's other files
        transient = getattr(e, "retryable", False) or isinstance(e, (ConnectionError, TimeoutError))
        return FileOutcome(doc.file_key, Status.FAILED, f"embedding failed: {type(e).__name__}: {e}",
                           raw.content_hash, raw.size, raw.mtime, failure_kind=TRANSIENT if transient else CONTENT)
    return EmbeddedFile(doc, raw, chunks, vectors, image_chunks, image_vectors, notes, page_chunks, page_vectors)


def _embed_pages(doc: ParsedDocument, raw: RawFile, page_embedder, dpi: int):
    """A PDF's pages rendered from the snapshot and embedded whole; nothing for other files."""
    if page_embedder is None or doc.mime != "application/pdf":
        return [], None
    from mmrag.models.page_embed import render_pages

    pages = render_pages(Path(raw.snapshot), dpi, max_pages=doc.pages or 10_000)
    chunks = [Chunk(id=f"p{i:05d}", text=f"{doc.rel_path} p.{i + 1}", block_ids=[], modality="page", page=i)
              for i, _ in pages]
    return chunks, page_embedder.embed_pages([png for _, png in pages])


def _embed(doc: ParsedDocument, chunks: list[Chunk], text_embedder, image_embedder):
    """The text chunks' vectors, and the pictures' chunks and vectors (when CLIP is on)."""
    vectors = text_embedder.embed([c.text for c in chunks])
    notes: list[str] = []
    image_chunks: list[Chunk] = []
    image_vectors = None
    images = [b for b in doc.blocks if b.kind == BlockKind.IMAGE and b.image_path]
    if images:
        if image_embedder is not None and image_embedder.enabled:
            image_chunks = [
                Chunk(id=f"i{b.id}", text=b.searchable_text() or b.caption or doc.rel_path, block_ids=[b.id],
                      modality="image", page=b.page, bbox=b.bbox, section=b.section, image_path=b.image_path,
                      t_start=b.t_start, t_end=b.t_end)
                for b in images
            ]
            image_vectors = image_embedder.embed_images([c.image_path for c in image_chunks])
            if image_embedder.random_weights:
                notes.append("CLIP has random weights (test mode): image vectors carry no meaning")
        else:
            reason = image_embedder.disabled_reason if image_embedder is not None else "no image embedder"
            notes.append(f"{len(images)} images not embedded: {reason}")
    return vectors, image_chunks, image_vectors, notes


def milvus_rows(emb: EmbeddedFile):
    """Rows for the text and image collections, with lineage and content-derived ids."""
    from mmrag.index.milvus_store import Row

    doc = emb.doc

    def make(c: Chunk, vec) -> Row:
        return Row(
            id=_row_id(doc.file_key, c),
            file_key=doc.file_key, source=doc.source, modality=c.modality, text=c.text,
            vector=[float(x) for x in vec], page=-1 if c.page is None else c.page, bbox=c.bbox,
            t_start=-1.0 if c.t_start is None else c.t_start, t_end=-1.0 if c.t_end is None else c.t_end,
            image_path=c.image_path or "", parser=f"{doc.parser} {doc.parser_version}",
            pipeline_version=PIPELINE_VERSION, chunk_id=c.id,
        )

    text_rows = [make(c, v) for c, v in zip(emb.chunks, emb.text_vectors)]
    image_rows = []
    if emb.image_vectors is not None:
        image_rows = [make(c, v) for c, v in zip(emb.image_chunks, emb.image_vectors)]
    return text_rows, image_rows


def page_rows(emb: EmbeddedFile):
    """Rows for the page collection (visual page retrieval): one per rendered page; ids change with
    the file's bytes."""
    from mmrag.index.milvus_store import Row

    doc = emb.doc
    if emb.page_vectors is None:
        return []
    return [Row(id=_page_row_id(emb, c), file_key=doc.file_key, source=doc.source, modality="page", text=c.text,
                vector=[float(x) for x in v], page=c.page, parser=f"{doc.parser} {doc.parser_version}",
                pipeline_version=PIPELINE_VERSION, chunk_id=c.id)
            for c, v in zip(emb.page_chunks, emb.page_vectors)]


def _row_id(file_key: str, c: Chunk) -> str:
    return row_id(file_key, c.id, c.content_hash + image_ref(c.image_path))


def _page_row_id(emb: EmbeddedFile, c: Chunk) -> str:
    return row_id(emb.doc.file_key, c.id, emb.raw.content_hash)


def expected_row_ids(emb: EmbeddedFile) -> dict[str, list[str]]:
    """The ids the file's rows get in each collection (`milvus_rows`, `page_rows`): the index audit
    and the asset check compare them with what Milvus holds."""
    fk = emb.doc.file_key
    return {"text": [_row_id(fk, c) for c in emb.chunks[:len(emb.text_vectors)]],
            "image": [_row_id(fk, c) for c in emb.image_chunks] if emb.image_vectors is not None else [],
            "page": [_page_row_id(emb, c) for c in emb.page_chunks] if emb.page_vectors is not None else []}
