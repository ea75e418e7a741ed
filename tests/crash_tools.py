"""Helpers for the crash and fault tests: run `mmrag ingest` in a child process (so it can be
killed), copy an index, and read a whole index back in a form two indexes can be compared in."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEP = "<SEP>"


def env_for(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMRAG_") and k != "DAGSTER_HOME"}
    env.update(MMRAG_HOME=str(home), DAGSTER_HOME=str(home / "dagster"), MMRAG_CLIP_PRETRAINED="random",
               HF_HUB_OFFLINE="1", DAGSTER_DISABLE_TELEMETRY="1", PYTHONPATH=str(REPO))
    env.update(extra)
    return env


def new_home(home: Path) -> Path:
    (home / "dagster").mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster" / "dagster.yaml")
    return home


def ingest_subprocess(home: Path, root: Path, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    """`mmrag ingest ROOT --source docs --json` in a child process (a kill point kills it)."""
    return subprocess.run([sys.executable, "-m", "mmrag.cli", "ingest", str(root), "--source", "docs", "--json"],
                          env=env_for(home, **env), capture_output=True, text=True, timeout=timeout, cwd=REPO)


def _norm(value):
    """Drop what legitimately differs between two equal indexes: timestamps, where the data dir lives,
    and how LightRAG joined a merged value's parts. LightRAG joins the descriptions of every mention
    of an entity; how many identical ones it keeps, and in which order, depends on the order in which
    files were merged and removed, not on the folder: the distinct parts are compared. (`id` is a key
    LightRAG's deletion writes into the nodes it looks at.)"""
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in sorted(value.items())
                if not (k.endswith("_at") or "time" in k
                        or k in ("_id", "id", "vector", "sparse", "root", "track_id"))}
    if isinstance(value, list):
        return sorted((_norm(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True, default=str))
    if isinstance(value, str):
        if "/blobs/" in value:
            return "blobs/" + value.rsplit("/blobs/", 1)[1]
        if SEP in value:
            parts = value.split(SEP)
            # a vector row's content leads with the entity's name (or the relation's keywords and ends)
            # on lines of their own before the description: "Name\nDesc1<SEP>Desc2"
            head, nl, parts[0] = parts[0].rpartition("\n")
            return head + nl + SEP.join(sorted(set(parts)))
    return value


def milvus_state(uri: str) -> dict[str, dict[str, dict]]:
    """Every row of every collection (vectors and timestamps left out), by id."""
    from mmrag.index.milvus_store import connect

    client = connect(uri)
    out: dict[str, dict[str, dict]] = {}
    for name in sorted(client.list_collections()):
        client.load_collection(name)
        fields = [f["name"] for f in client.describe_collection(name)["fields"]
                  if f["name"] not in ("vector", "sparse", "created_at")]
        rows: dict[str, dict] = {}
        it = client.query_iterator(name, batch_size=1000, filter="", output_fields=fields + ["*"])
        try:
            while batch := it.next():
                for r in batch:
                    assert r["id"] not in rows, f"{name}: id {r['id']} twice"
                    rows[r["id"]] = _norm({k: v for k, v in r.items()})
        finally:
            it.close()
        out[name] = rows
    return out


def graph_state(ws_dir: Path) -> dict:
    path = ws_dir / "graph_chunk_entity_relation.graphml"
    if not path.exists():
        return {"nodes": {}, "edges": {}}
    root = ET.parse(path).getroot()
    ns = {"g": "http://graphml.graphdrawing.org/xmlns"}
    keys = {k.get("id"): k.get("attr.name") for k in root.findall("g:key", ns)}

    def data(el):
        return _norm({keys[d.get("key")]: d.text or "" for d in el.findall("g:data", ns)})

    g = root.find("g:graph", ns)
    nodes = {n.get("id"): data(n) for n in g.findall("g:node", ns)}
    edges = {"\x1f".join(sorted((e.get("source"), e.get("target")))): data(e) for e in g.findall("g:edge", ns)}
    return {"nodes": nodes, "edges": edges}


def kv_state(ws_dir: Path, cache: bool = True) -> dict[str, dict]:
    out = {}
    for f in sorted(ws_dir.glob("kv_store_*.json")):
        data = json.loads(f.read_text(encoding="utf-8") or "{}")
        if "llm_response_cache" in f.name:  # which prompts were answered, not when
            if cache:
                out[f.name] = sorted(data)
        else:
            out[f.name] = _norm(data)
    return out


def manifest_state(home: Path) -> dict:
    con = sqlite3.connect(home / "state.sqlite")
    try:
        files = {r[0]: {"status": r[1], "hash": r[2], "text_rows": r[3], "image_rows": r[4], "kind": r[5],
                        "fingerprint": r[6]}
                 for r in con.execute("SELECT file_key, status, content_hash, text_rows, image_rows, failure_kind, "
                                      "fingerprint FROM files")}
        refs = sorted(con.execute("SELECT file_key, kind, ref FROM graph_refs"))
    finally:
        con.close()
    return {"files": files, "graph_refs": refs}


def stage_state(home: Path) -> dict[str, int]:
    return {d.name: len(list(d.glob("*.pkl"))) for d in sorted((home / "stages").glob("*")) if d.is_dir()}


def index_state(home: Path, cache: bool = True) -> dict:
    """The whole index of a data dir: Milvus rows of every collection, LightRAG's graph and KV
    stores, the manifest and the stage outputs. `cache=False` leaves out LightRAG's LLM response
    cache (which prompts were ever answered: a history that failed half-way asked more)."""
    ws = home / "lightrag" / "mmrag_graph"
    return {"milvus": milvus_state(str((home / "milvus.db").resolve())), "graph": graph_state(ws),
            "kv": kv_state(ws, cache), "manifest": manifest_state(home), "stages": stage_state(home)}


def dangling(state: dict) -> list[str]:
    """Vectors of LightRAG's collections with no graph item or chunk record behind them (and back)."""
    from lightrag.utils import compute_mdhash_id, make_relation_vdb_ids

    m, g = state["milvus"], state["graph"]
    problems = []
    ents = {compute_mdhash_id(n, prefix="ent-") for n in g["nodes"]}
    rels = {make_relation_vdb_ids(*k.split("\x1f"))[0] for k in g["edges"]}
    chunks = set(state["kv"].get("kv_store_text_chunks.json", {}))
    for coll, want in (("mmrag_graph_entities", ents), ("mmrag_graph_relationships", rels),
                       ("mmrag_graph_chunks", chunks)):
        have = set(m.get(coll, {}))
        problems += [f"{coll}: vector {i} has no item" for i in sorted(have - want)]
        problems += [f"{coll}: item {i} has no vector" for i in sorted(want - have)]
    return problems


def diff(a: dict, b: dict, path: str = "") -> list[str]:
    """Where two index states differ (first 20 places)."""
    out: list[str] = []
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a:
                out.append(f"{path}/{k}: only in the second")
            elif k not in b:
                out.append(f"{path}/{k}: only in the first")
            else:
                out += diff(a[k], b[k], f"{path}/{k}")
    elif a != b:
        out.append(f"{path}: {str(a)[:150]!r} != {str(b)[:150]!r}")
    return out[:20]
