"""Benchmark (not a test): the embedding service (`mmrag embed-server`'s app) on each device torch sees.

For each device (`cpu`, and `cuda` when torch sees a GPU) it starts the service in a child process with
MMRAG_EMBED_DEVICE set, reads `GET /v1/models` (the device each model loaded on), then times
`POST /v1/embeddings` over HTTP: `--texts` texts to the text model in requests of 256, and `--pictures`
pictures (random PNGs as data URIs) to CLIP in requests of 32. It prints the throughput per device,
the GPU/CPU ratio and how far the GPU's vectors are from the CPU's (same weights).

Runs where the project's dependencies are not all installed (a GPU machine with torch and
sentence-transformers): the service needs only mmrag.serve.embeddings, FastAPI, uvicorn and open_clip.
`--random-text-model DIR` builds a sentence-transformers model with random weights from the config and
tokenizer files in DIR (for a machine without the packaged MiniLM weights).

    python bench/embed_devices.py [--texts 4096] [--pictures 256] [--random-text-model DIR] [--json]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SERVE = """
import sys, uvicorn
from mmrag.config import Settings
from mmrag.serve.embeddings import create_app
uvicorn.run(create_app(Settings.from_env()), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def random_text_model(src: Path, dest: Path) -> Path:
    """A sentence-transformers model with random weights, from `src`'s config and tokenizer files."""
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    hf = dest / "hf"
    config = AutoConfig.from_pretrained(src)
    AutoModel.from_config(config).save_pretrained(hf)
    AutoTokenizer.from_pretrained(src).save_pretrained(hf)
    word = models.Transformer(str(hf), max_seq_length=256)
    dim = word.get_embedding_dimension() if hasattr(word, "get_embedding_dimension") else word.get_word_embedding_dimension()
    pool = models.Pooling(dim, pooling_mode="mean")
    SentenceTransformer(modules=[word, pool, models.Normalize()]).save(str(dest / "st"))
    return dest / "st"


def _pictures(n: int) -> list[str]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        img = Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out.append("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode())
    return out


def run_device(device: str, env: dict, texts: list[str], pictures: list[str]) -> dict:
    import httpx
    import numpy as np

    port = _free_port()
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", SERVE, str(port)], env={**env, "MMRAG_EMBED_DEVICE": device},
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the service exited: {proc.stderr.read()[-3000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        start_s = time.monotonic() - t0
        listing = httpx.get(f"{url}/v1/models", timeout=30).json()["data"]
        text_model = next(m for m in listing if m["kind"] == "text")
        clip = next(m for m in listing if m["kind"] == "clip")
        with httpx.Client(timeout=600) as client:
            def embed(model: str, inputs: list[str], per: int) -> tuple[float, np.ndarray]:
                client.post(f"{url}/v1/embeddings", json={"model": model, "input": inputs[:per]})  # warm
                t = time.perf_counter()
                vecs = []
                for i in range(0, len(inputs), per):
                    r = client.post(f"{url}/v1/embeddings", json={"model": model, "input": inputs[i:i + per],
                                                                  "encoding_format": "base64"})  # as mmrag's clients
                    r.raise_for_status()
                    vecs += [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in r.json()["data"]]
                return time.perf_counter() - t, np.asarray(vecs, dtype=np.float32)

            text_s, text_vecs = embed(text_model["id"], texts, 256)
            pic_s, pic_vecs = embed(clip["id"], pictures, 32)
    finally:
        proc.terminate()
        proc.wait(30)
    return {"device": device, "text_on": text_model.get("device"), "clip_on": clip.get("device"),
            "start_s": round(start_s, 1), "texts_per_s": round(len(texts) / text_s, 1),
            "pictures_per_s": round(len(pictures) / pic_s, 1), "_text": text_vecs, "_pics": pic_vecs}


def in_process(device: str, env: dict, texts: list[str], pictures: list[str]) -> dict:
    from PIL import Image

    from mmrag.models.embedders import ImageEmbedder, TextEmbedder

    text = TextEmbedder(env.get("MMRAG_TEXT_EMBED_MODEL", "all-MiniLM-L6-v2"), device=device)
    clip = ImageEmbedder("ViT-B-32", "random", device=device)
    decoded = [Image.open(io.BytesIO(base64.b64decode(p.split(",", 1)[1]))).convert("RGB") for p in pictures]
    text.embed(texts[:256])
    clip.embed_pictures(decoded[:32])
    t = time.perf_counter()
    text.embed(texts)
    text_s = time.perf_counter() - t
    t = time.perf_counter()
    clip.embed_pictures(decoded)
    pic_s = time.perf_counter() - t
    return {"in_process_texts_per_s": round(len(texts) / text_s, 1),
            "in_process_pictures_per_s": round(len(pictures) / pic_s, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--texts", type=int, default=4096)
    p.add_argument("--pictures", type=int, default=256)
    p.add_argument("--random-text-model", type=Path, default=None)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    import numpy as np
    import torch

    env = {**os.environ, "MMRAG_CLIP_PRETRAINED": os.environ.get("MMRAG_CLIP_PRETRAINED", "random"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])), "HF_HUB_OFFLINE": "1"}
    tmp = Path(tempfile.mkdtemp(prefix="mmrag-embed-devices-"))
    env.setdefault("MMRAG_HOME", str(tmp / "home"))
    if args.random_text_model:
        env["MMRAG_TEXT_EMBED_MODEL"] = str(random_text_model(args.random_text_model, tmp / "text-model"))
    texts = [f"Survey note {i}: the observers counted {i % 97} teal and {i % 13} herons near the reeds at dawn."
             for i in range(args.texts)]
    pictures = _pictures(args.pictures)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    res = [run_device(d, env, texts, pictures) for d in devices]
    for r in res:  # the models alone, in this process: what the service's HTTP and JSON add
        r.update(in_process(r["device"], env, texts, pictures))
    out = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           "cpu_threads": torch.get_num_threads(), "results": [{k: v for k, v in r.items() if not k.startswith("_")}
                                                               for r in res]}
    if len(res) == 2:
        cpu, gpu = res
        out["gpu_over_cpu"] = {"texts": round(gpu["texts_per_s"] / cpu["texts_per_s"], 1),
                               "pictures": round(gpu["pictures_per_s"] / cpu["pictures_per_s"], 1)}
        out["max_abs_diff_gpu_vs_cpu"] = {"text": float(np.abs(gpu["_text"] - cpu["_text"]).max()),
                                          "clip": float(np.abs(gpu["_pics"] - cpu["_pics"]).max())}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"torch {out['torch']}, GPU {out['gpu']}, {out['cpu_threads']} CPU threads")
    for r in out["results"]:
        print(f"{r['device']:5s} (text on {r['text_on']}, CLIP on {r['clip_on']}): ready in {r['start_s']} s; "
              f"through the service {r['texts_per_s']} texts/s, {r['pictures_per_s']} pictures/s; "
              f"in process {r['in_process_texts_per_s']} texts/s, {r['in_process_pictures_per_s']} pictures/s")
    if "gpu_over_cpu" in out:
        print(f"GPU / CPU: texts {out['gpu_over_cpu']['texts']}x, pictures {out['gpu_over_cpu']['pictures']}x; "
              f"max |GPU - CPU| text {out['max_abs_diff_gpu_vs_cpu']['text']:.2e}, "
              f"CLIP {out['max_abs_diff_gpu_vs_cpu']['clip']:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
