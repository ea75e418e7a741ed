"""The index audit: the watched folders, the manifest, the Milvus rows, LightRAG's graph and stores,
the blob store and the stage outputs, compared; every difference named.

What each part must hold, for every file the manifest lists as in the index (`indexed`/`partial`):
- Milvus: exactly the row ids its stage output (`embeddings`) gives, in both collections (a file
  that failed or was skipped keeps its earlier rows: only their number is compared). An id is the
  primary key and Milvus answers the last write of a repeated one, so a duplicate is a second id
  for the same content: a row of another version ("stale");
- the graph: every entity, relation and chunk its graph references name;
- the blob store: its snapshot and every figure or frame its rows point to;
- the stage outputs: its `raw_files` and `embeddings` outputs, of the content the manifest records.
And nothing else: rows, graph items, stage outputs and graph references of no listed file are
orphans; blobs nothing names are left to `mmrag gc` (its grace period protects runs in flight).

Domain logic only (no Dagster): `mmrag check`, the `index_audit` asset and the tests call `audit`.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mmrag.config import Settings
from mmrag.graph.scope import REL_SEP
from mmrag.index.gc import _names
from mmrag.index.milvus_store import COLLECTIONS, PAGE, TEXT
from mmrag.index.stage_files import STAGES, load_output, stage_file_name
from mmrag.index.stages import EmbeddedFile, FileOutcome, RawFile, expected_row_ids
from mmrag.manifest import IN_INDEX, FileRecord, Manifest, Status

# What a repair does about a difference.
REINDEX = "reindex"  # the file is requested again (its next run rewrites every part)
DELETE = "delete"  # the orphan is deleted
CLEANUP = "cleanup"  # the deleted file's entries are removed (the clean-up job)
GC = "gc"  # blob garbage collection (after its grace period)
NONE = "none"  # nothing mmrag can do (a missing root)


@dataclass
class Difference:
    kind: str  # missing | orphaned | stale
    part: str  # folder | manifest | milvus | graph | blobs | stages
    key: str  # the file key (or, for an orphan, the object's id)
    detail: str
    fix: str

    def line(self) -> str:
        return f"{self.kind:10s} {self.part:8s} {self.key}  — {self.detail} [{self.fix}]"


@dataclass
class AuditReport:
    differences: list[Difference] = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    # orphans by part, for the repair: {"milvus": {modality: [ids]}, "graph": {...}, "stages": [paths], "refs": [keys]}
    orphans: dict = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not self.differences

    def add(self, kind: str, part: str, key: str, detail: str, fix: str) -> None:
        self.differences.append(Difference(kind, part, key, detail, fix))

    def reindex_keys(self) -> list[str]:
        return sorted({d.key for d in self.differences if d.fix == REINDEX})

    def to_json(self) -> dict:
        by = Counter(f"{d.kind} {d.part}" for d in self.differences)
        return {"clean": self.clean, "sources": self.sources, "counts": self.counts, "seconds": self.seconds,
                "summary": dict(sorted(by.items())), "differences": [asdict(d) for d in self.differences]}


def audit(settings: Settings, sources: list[str] | None = None, *, grace_s: float = 3600.0) -> AuditReport:
    """Compare every part of the index with the folders, for `sources` (default: all)."""
    from mmrag.models import factory

    rep = AuditReport()
    manifest = factory.manifest(settings)
    roots = manifest.sources()
    wanted = sorted(roots) if not sources else [s for s in sources if s in roots]
    for s in sources or []:
        if s not in roots:
            rep.add("missing", "folder", s, "no such source in the manifest", NONE)
    rep.sources = wanted
    mine = lambda key: key.partition(":")[0] in wanted  # noqa: E731
    all_records = {r.file_key: r for r in manifest.all()}
    records = {k: r for k, r in all_records.items() if mine(k)}
    rep.counts["files"] = len(records)

    t = time.perf_counter()
    _folders(rep, settings, manifest, roots, wanted, records)
    rep.seconds["folders"] = round(time.perf_counter() - t, 3)

    t = time.perf_counter()
    whole = set(wanted) == set(roots)
    outputs, blob_names = _stage_outputs(rep, settings, all_records, records, mine, whole)
    rep.seconds["stage outputs"] = round(time.perf_counter() - t, 3)

    t = time.perf_counter()
    image_paths = _milvus(rep, settings, all_records, records, outputs, mine)
    blob_names |= {p.rsplit("/", 1)[-1] for p in image_paths}
    rep.seconds["milvus"] = round(time.perf_counter() - t, 3)

    t = time.perf_counter()
    _blobs(rep, settings, records, outputs, image_paths, blob_names, grace_s, whole)
    rep.seconds["blobs"] = round(time.perf_counter() - t, 3)

    t = time.perf_counter()
    _graph(rep, settings, manifest, all_records, records, mine)
    rep.seconds["graph"] = round(time.perf_counter() - t, 3)
    rep.seconds["total"] = round(sum(rep.seconds.values()), 3)
    return rep


def _folders(rep: AuditReport, settings: Settings, manifest: Manifest, roots: dict, wanted: list[str],
             records: dict[str, FileRecord]) -> None:
    """Folder scan against the manifest: the sync's own plan (`plan_sync`), each entry named."""
    from mmrag.sources.sync import plan_sync, scan_root

    fingerprint = settings.fingerprint()
    for source in wanted:
        scan = scan_root(roots[source], source)
        if scan.error:
            rep.add("missing", "folder", source, f"{scan.error}: its files' entries are kept", NONE)
            continue
        recs = {k: r for k, r in records.items() if k.startswith(f"{source}:")}
        plan = plan_sync(scan, recs, set(recs), fingerprint)
        for key in plan.new + plan.changed:
            rec = recs.get(key)
            if rec is None:
                rep.add("missing", "manifest", key, "in the folder, not in the index", REINDEX)
            elif rec.status in (Status.PENDING, Status.INDEXING):
                rep.add("stale", "manifest", key, f"{rec.status}: a run has not finished it", REINDEX)
            else:
                rep.add("stale", "manifest", key, "the file changed since it was indexed", REINDEX)
        for key in plan.stale:
            rec = recs[key]
            why = ("indexed with other settings" if rec.fingerprint != fingerprint
                   else f"{rec.status}, its retry is due")
            rep.add("stale", "manifest", key, why, REINDEX)
        for key in plan.deleted:
            rep.add("orphaned", "manifest", key, "gone from the folder; its index entries remain", CLEANUP)


def _stage_outputs(rep: AuditReport, settings: Settings, all_records: dict[str, FileRecord],
                   records: dict[str, FileRecord], mine, whole: bool) -> tuple[dict, set[str]]:
    """Read the stage outputs once: orphans (no listed file), stale or missing ones of files in the
    index, and every blob name they hold. Returns ({key: (RawFile|None, EmbeddedFile|None)}, names)."""
    home = settings.home
    names: set[str] = set()
    by_name = {stage_file_name(k): k for k in all_records}
    outputs: dict[str, list] = {k: [None, None] for k in records}
    n = 0
    for stage in STAGES:
        d = home / "stages" / stage
        if not d.is_dir():
            continue
        for pkl in d.glob("*.pkl"):
            key = by_name.get(pkl.name)
            if key is None:  # its name is a hash: whose it was is unknown, so whole audits only
                if whole:
                    rep.add("orphaned", "stages", f"{stage}/{pkl.name}", "a stage output of no listed file", DELETE)
                    rep.orphans.setdefault("stages", []).append(str(pkl))
                continue
            if not mine(key):
                continue
            try:
                value = load_output(pkl)
            except Exception as e:  # noqa: BLE001 - an unreadable output is a difference, not a crash
                if mine(key):
                    rep.add("stale", "stages", key, f"{stage} output unreadable ({type(e).__name__})", REINDEX)
                continue
            n += 1
            _names(value, names)
            if key in outputs:
                if stage == "raw_files":
                    outputs[key][0] = value
                elif stage == "embeddings":
                    outputs[key][1] = value
    rep.counts["stage_outputs"] = n
    for key, rec in records.items():
        if rec.status not in IN_INDEX:
            continue
        raw, emb = outputs[key]
        for stage, value in (("raw_files", raw), ("embeddings", emb)):
            if value is None:
                rep.add("missing", "stages", key, f"no {stage} output", REINDEX)
                continue
            digest = value.content_hash if isinstance(value, (RawFile, FileOutcome)) else value.raw.content_hash
            if isinstance(value, FileOutcome) or digest != rec.content_hash:
                rep.add("stale", "stages", key, f"{stage} output is of another version "
                        f"({(digest or '?')[:12]}, the index has {(rec.content_hash or '?')[:12]})", REINDEX)
    return outputs, names


def _milvus(rep: AuditReport, settings: Settings, all_records: dict[str, FileRecord], records: dict[str, FileRecord],
            outputs: dict, mine) -> set[str]:
    """Every row of every collection against what each file's stage output says it has."""
    from mmrag.models import factory

    store = factory.milvus_store(settings)
    image_paths: set[str] = set()
    rows = 0
    for modality in COLLECTIONS:
        ids: dict[str, list[str]] = {}
        for r in store.all_rows(modality, ["file_key", "image_path"]):
            rows += 1
            if not mine(r["file_key"]):
                continue
            ids.setdefault(r["file_key"], []).append(r["id"])
            if r["image_path"]:
                image_paths.add(r["image_path"])
        for key, have in ids.items():
            if key not in all_records:
                rep.add("orphaned", "milvus", key, f"{len(have)} {modality} rows of no listed file", DELETE)
                rep.orphans.setdefault("milvus", {}).setdefault(modality, []).extend(have)
        for key, rec in records.items():
            have = set(ids.get(key, ()))
            emb = outputs.get(key, (None, None))[1]
            if rec.status in IN_INDEX and isinstance(emb, EmbeddedFile) and emb.raw.content_hash == rec.content_hash:
                want = set(expected_row_ids(emb)[modality])
                if missing := want - have:
                    rep.add("missing", "milvus", key, f"{len(missing)} of {len(want)} {modality} rows", REINDEX)
                if extra := have - want:
                    rep.add("stale", "milvus", key, f"{len(extra)} {modality} rows of another version", REINDEX)
            else:  # failed or skipped: it keeps its earlier rows (or its stage output is reported above)
                want_n = rec.text_rows if modality == TEXT else rec.image_rows
                if rec.status in (Status.PENDING, Status.INDEXING) or modality == PAGE:
                    continue  # a run in flight (or killed): the folder part names it; page rows: not counted
                if len(have) != (want_n or 0):
                    rep.add("missing" if len(have) < (want_n or 0) else "stale", "milvus", key,
                            f"{len(have)} {modality} rows, the manifest says {want_n or 0}", REINDEX)
    rep.counts["milvus_rows"] = rows
    return image_paths


def _blobs(rep: AuditReport, settings: Settings, records: dict[str, FileRecord], outputs: dict,
           image_paths: set[str], names: set[str], grace_s: float, whole: bool) -> None:
    from mmrag.sources.blobs import BlobStore

    root = settings.blobs_dir
    on_disk = {p.name for p in Path(root).glob("??/*")} if root.is_dir() else set()
    rep.counts["blobs"] = len(on_disk)
    for key, rec in records.items():
        if rec.status not in IN_INDEX:
            continue
        raw, emb = outputs[key]
        wanted = []
        if isinstance(raw, RawFile):
            wanted.append(("snapshot", raw.snapshot))
        if isinstance(emb, EmbeddedFile):
            wanted += [("figure", c.image_path) for c in [*emb.chunks, *emb.image_chunks] if c.image_path]
        gone = [(what, p) for what, p in wanted if Path(p).name not in on_disk]
        if gone:
            what = ", ".join(sorted({w for w, _ in gone}))
            rep.add("missing", "blobs", key, f"{len(gone)} blobs ({what}) are gone, e.g. {Path(gone[0][1]).name}", REINDEX)
    if whole:  # with --source, blobs of the other sources are not read: no orphan count
        swept = BlobStore(root).sweep(names, grace_s, dry_run=True) if root.is_dir() else {"removed": 0}
        if swept["removed"]:
            rep.add("orphaned", "blobs", "blobs", f"{swept['removed']} blobs nothing names, older than "
                    f"{grace_s:.0f} s ({swept['freed_bytes']} bytes)", GC)


def _graph(rep: AuditReport, settings: Settings, manifest: Manifest, all_records: dict[str, FileRecord],
           records: dict[str, FileRecord], mine) -> None:
    """The manifest's graph references against LightRAG's graph and chunk store."""
    refs = manifest.all_graph_refs()
    held = {fk for kind in refs.values() for fk in kind}
    for fk in sorted(held - set(all_records)):
        if mine(fk):
            rep.add("orphaned", "manifest", fk, "graph references of no listed file", DELETE)
            rep.orphans.setdefault("refs", []).append(fk)
    if not held and not (settings.graph_dir.is_dir() and any(settings.graph_dir.iterdir())):
        return
    nodes, edges, chunks = _graph_inventory(settings, manifest)
    rep.counts.update(graph_nodes=len(nodes), graph_edges=len(edges), graph_chunks=len(chunks))
    listed = lambda kind: {r for fk, rs in refs.get(kind, {}).items() if fk in all_records for r in rs}  # noqa: E731
    want_nodes, want_chunks = listed("entity"), listed("chunk")
    want_edges = {tuple(sorted(r.split(REL_SEP))) for r in listed("relation")}
    for key, rec in records.items():
        lost = []
        for kind, have, theirs in (("entity", nodes, refs.get("entity", {}).get(key, set())),
                                   ("chunk", chunks, refs.get("chunk", {}).get(key, set()))):
            if miss := theirs - have:
                lost.append(f"{len(miss)} {kind}{'s' if len(miss) > 1 else ''} (e.g. {sorted(miss)[0][:60]!r})")
        pairs = {tuple(sorted(r.split(REL_SEP))) for r in refs.get("relation", {}).get(key, set())}
        if miss := pairs - edges:
            lost.append(f"{len(miss)} relation{'s' if len(miss) > 1 else ''}")
        if lost:
            rep.add("missing", "graph", key, "its references do not resolve: " + ", ".join(lost), REINDEX)
    # Orphans: what no listed file holds. LightRAG adds the endpoints of a relation it extracted as
    # nodes too, so a node that ends a held relation is held. A graph item does not name its source
    # reliably (extracted entities are shared): orphans are looked for by whole audits only.
    if set(rep.sources) != set(manifest.sources()):
        return
    ends = {n for e in want_edges for n in e}
    orphans = {"entities": sorted(nodes - want_nodes - ends), "relations": sorted(edges - want_edges),
               "chunks": sorted(chunks - want_chunks)}
    for what, items in orphans.items():
        if items:
            rep.add("orphaned", "graph", what, f"{len(items)} {what} no listed file holds, e.g. {str(items[0])[:80]}",
                    DELETE)
    if any(orphans.values()):
        rep.orphans["graph"] = orphans


def _graph_inventory(settings: Settings, manifest: Manifest):
    from mmrag.graph.lightrag_adapter import inventory_on_disk

    return inventory_on_disk(settings.graph_dir, f"{settings.collection_prefix}_graph")
