"""Where an ingest's CPU goes (a benchmark, not a test): `mmrag ingest` of the 10 office/HTML/Markdown
sample files under py-spy, against the loopback model server answering at once (0 s latency), so
every sample is this machine's own work.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/profile_ingest.py [--copies N] [--rate HZ] [--top N] [--keep]

py-spy samples the CLI and its children (the parse worker) while they are on CPU (idle threads are
not sampled). Each sample is put in the first category whose marker is in its stack, checked in
this order: imports (a module being imported), parsing (Docling, the parse worker), embedding
(sentence-transformers, torch, open_clip), LightRAG, Milvus (pymilvus, milvus_lite), model client
(openai, httpx), Dagster, other. It prints each category's share and the hottest leaf functions of
every category but parsing.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

CATEGORIES = [  # (name, markers in a stack): the first that matches wins
    ("imports", ("_find_and_load", "_call_with_frames_removed")),
    ("parsing", ("docling", "mmrag/parsing", "pypdfium2", "pytesseract")),
    ("embedding", ("sentence_transformers", "torch", "open_clip", "transformers/")),
    ("lightrag", ("lightrag/",)),
    ("milvus", ("pymilvus", "milvus_lite", "grpc")),
    ("model client", ("openai/", "httpx", "httpcore")),
    ("dagster", ("dagster",)),
]


def category(stack: str) -> str:
    for name, markers in CATEGORIES:
        if any(m in stack for m in markers):
            return name
    return "other"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--copies", type=int, default=1)
    p.add_argument("--rate", type=int, default=50, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        raise SystemExit("bench: py-spy is not installed (pip install py-spy)")

    from openai_server import FakeOpenAIServer
    from vs_raganything import FILES, Responder, build_corpus

    tmp = Path(tempfile.mkdtemp(prefix="mmrag-profile-"))
    try:
        root = tmp / "corpus"
        build_corpus(root, args.copies, list(FILES))
        raw = tmp / "profile.txt"
        with FakeOpenAIServer(latency_s=0.0) as server:
            server.responder = Responder(plain=False)
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MMRAG_HOME": str(tmp / "home"),
                   "MMRAG_LLM_URL": server.base_url, "MMRAG_LLM_MODEL": "fake-llm", "MMRAG_VLM_MODEL": "fake-vlm",
                   "MMRAG_CLIP_PRETRAINED": "random"}
            t0 = time.perf_counter()
            proc = subprocess.run([py_spy, "record", "--subprocesses", "-r", str(args.rate), "-f", "raw", "-o", str(raw),
                                   "--", sys.executable, "-m", "mmrag.cli", "ingest", str(root), "--source", "bench",
                                   "--json"], env=env, cwd=REPO, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            requests = len(server.requests)
        if proc.returncode != 0 or not raw.exists():
            print(proc.stderr[-3000:])
            return 1
        by_cat: collections.Counter[str] = collections.Counter()
        leaves: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        for line in raw.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            if not n.isdigit():
                continue
            cat = category(stack)
            by_cat[cat] += int(n)
            frames = stack.split(";")
            # the deepest frame of our own code or of the library that owns the sample
            own = next((f for f in reversed(frames) if "mmrag" in f or "dagster" in f or "lightrag" in f), frames[-1])
            leaves[cat][own.strip()] += int(n)
        total = sum(by_cat.values()) or 1
        print(f"mmrag ingest of {args.copies * len(FILES)} files: wall {wall:.1f} s under py-spy, {requests} model "
              f"requests (0 s latency), {total} samples at {args.rate} Hz ({total / args.rate:.1f} CPU-s)")
        for cat, n in by_cat.most_common():
            print(f"  {cat:13s} {n / args.rate:7.1f} CPU-s  {100 * n / total:5.1f} %")
        for cat in [c for c, _ in by_cat.most_common() if c != "parsing"]:
            print(f"\n{cat}: hottest frames (deepest mmrag/dagster/lightrag frame of each sample)")
            for frame, n in leaves[cat].most_common(args.top // 3 or 1):
                print(f"  {n / args.rate:6.2f} s  {frame[:150]}")
        return 0
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
