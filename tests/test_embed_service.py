"""The warm embedding service (`mmrag embed-server`, `mmrag.serve.embeddings`), a real uvicorn server in
a child process with the packaged MiniLM and CLIP (random weights): its vectors are the in-process
ones, a run that uses it indexes text and pictures without importing torch, a run while it is down
fails its files transiently and a later run indexes them, and `mmrag up`'s discovery file points
other processes at it only for the models it serves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import REPO, SAMPLE, copy_corpus
from helpers import free_port, wait_ready

from mmrag.config import Settings
from mmrag.models.embedders import TextEmbedder
from mmrag.models.llm import LLMClient, LLMError
from mmrag.models.served import ServedImageEmbedder, served_text_embedder

TEXTS = ["Pochards dive to the bottom of lakes.", "Eiders line their nests with down.", "x"]
PICTURE = SAMPLE / "example_image_01.png"


def _env(tmp: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMRAG_") and k != "DAGSTER_HOME"}
    env.update(MMRAG_HOME=str(tmp / "home"), DAGSTER_HOME=str(tmp / "dagster"), MMRAG_CLIP_PRETRAINED="random",
               HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), **extra)
    (tmp / "dagster").mkdir(exist_ok=True)
    (tmp / "dagster" / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    return env


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("embed")
    port = free_port()
    log = tmp / "embed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mmrag.cli", "embed-server", "--port", str(port)],
                                env=_env(tmp), cwd=tmp, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_ready("mmrag embed-server", lambda: httpx.get(f"{url[:-3]}/health", timeout=2).status_code == 200,
                   proc, 180, lambda: log.read_text()[-3000:])
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def test_the_service_serves_the_vectors_the_process_would_compute(service):
    client = LLMClient(service, "", retries=0)
    served = served_text_embedder(client, "all-MiniLM-L6-v2")
    assert served.dim == 384
    np.testing.assert_allclose(served.embed(TEXTS), TextEmbedder("all-MiniLM-L6-v2").embed(TEXTS), atol=1e-5)
    as_bytes = served_text_embedder(client, "all-MiniLM-L6-v2", encoding="base64")  # what mmrag's clients ask for
    np.testing.assert_array_equal(as_bytes.embed(TEXTS), served.embed(TEXTS))
    listing = client.model_info()
    assert listing["all-MiniLM-L6-v2"]["dim"] == 384 and listing["ViT-B-32/random"]["dim"] == 512

    clip = ServedImageEmbedder(client, "ViT-B-32", "random")
    assert clip.enabled and clip.random_weights and clip.dim == 512
    one, again = clip.embed_images([str(PICTURE)]), clip.embed_images([str(PICTURE)])
    assert one.shape == (1, 512) and np.allclose(one, again) and abs(np.linalg.norm(one) - 1) < 1e-4
    words = clip.embed_texts(["a duck"])
    assert words.shape == (1, 512) and not np.allclose(words, one)

    off = ServedImageEmbedder(client, "ViT-B-32", "laion2b_s34b_b79k")  # not what this service loaded
    assert not off.enabled and "does not serve ViT-B-32/laion2b_s34b_b79k" in off.disabled_reason
    with pytest.raises(LLMError) as refused:
        client.embed(["https://example.com/duck.png"], "ViT-B-32/random")  # never fetched
    assert refused.value.status == 400
    with pytest.raises(LLMError) as unknown:
        client.embed(["hello"], "some-other-model")
    assert unknown.value.status == 404 and not unknown.value.retryable


_RUN = """
import json, sys
from mmrag.cli import main
rc = main(["ingest", sys.argv[1], "--source", "docs", "--json"])
print(json.dumps({"rc": rc, "imported": sorted(m for m in ("torch", "sentence_transformers", "open_clip")
                                                 if m in sys.modules)}), file=sys.stderr)
"""


def _ingest(env: dict, root: Path) -> tuple[dict, dict]:
    """`mmrag ingest` in a child process: (its JSON, what it says it imported), and the status."""
    proc = subprocess.run([sys.executable, "-c", _RUN, str(root)], env=env, capture_output=True, text=True, timeout=600)
    said = json.loads(proc.stderr.strip().splitlines()[-1])
    status = subprocess.run([sys.executable, "-m", "mmrag.cli", "status", "--json"], env=env, capture_output=True,
                            text=True, timeout=120)
    files = {f["path"]: f for f in json.loads(status.stdout)["sources"]["docs"]["files"]}
    return said, files


@pytest.mark.slow
def test_a_run_on_the_service_imports_no_torch_and_a_run_while_it_is_down_is_retried(service, tmp_path):
    root = copy_corpus(SAMPLE, tmp_path / "docs", ["duck.md", PICTURE.name])
    down = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    env = _env(tmp_path, MMRAG_EMBED_SERVICE_URL=down, MMRAG_LLM_RETRIES="0", MMRAG_RETRY_BACKOFF_S="0")
    said, files = _ingest(env, root)
    assert said["rc"] == 1, said  # EXIT_FAILED_FILES: the run went through, its files failed
    for f in files.values():
        assert f["status"] == "failed" and f["failure_kind"] == "transient", f
        assert "embedding failed" in f["reason"], f

    said, files = _ingest({**env, "MMRAG_EMBED_SERVICE_URL": service}, root)
    assert said == {"rc": 0, "imported": []}  # the run process loaded no model: the service computed
    assert files["duck.md"]["status"] == "indexed" and files["duck.md"]["text_rows"] >= 1
    assert files[PICTURE.name]["status"] == "indexed" and files[PICTURE.name]["image_rows"] == 1
    # The same vectors as an in-process run: the service is not part of the configuration's fingerprint.
    assert Settings.from_env({**env, "MMRAG_EMBED_SERVICE_URL": service}).fingerprint() == \
        Settings.from_env({**env, "MMRAG_EMBED_SERVICE_URL": "off"}).fingerprint()


def test_the_discovery_file_is_used_only_for_the_models_it_serves(tmp_path):
    from mmrag.serve import discovery

    home = tmp_path / "home"
    discovery.announce(home, discovery.EMBED, {"url": "http://127.0.0.1:9/v1", "text_model": "all-MiniLM-L6-v2",
                                               "clip": "ViT-B-32/random"})
    base = {"MMRAG_HOME": str(home), "MMRAG_CLIP_PRETRAINED": "random"}
    assert Settings.from_env(base).embed_service_url == "http://127.0.0.1:9/v1"
    assert Settings.from_env({**base, "MMRAG_TEXT_EMBED_MODEL": "another-model"}).embed_service_url == ""
    assert Settings.from_env({**base, "MMRAG_CLIP_PRETRAINED": "off"}).embed_service_url == ""
    assert Settings.from_env({**base, "MMRAG_EMBED_SERVICE_URL": "off"}).embed_service_url == ""
    discovery.withdraw(home, discovery.EMBED)
    assert Settings.from_env(base).embed_service_url == ""


@pytest.mark.slow
def test_missing_clip_weights_offline_are_one_warning_line(tmp_path):
    """The README's main job offline: CLIP's default weights cannot be fetched. That is said once, as a
    WARNING (no ERROR from open_clip, no traceback, no Dagster BetaWarning), and the text is indexed."""
    root = copy_corpus(SAMPLE, tmp_path / "docs", ["duck.md", PICTURE.name])
    env = _env(tmp_path, MMRAG_EMBED_SERVICE_URL="off")
    env.pop("MMRAG_CLIP_PRETRAINED")  # the default: laion2b_s34b_b79k, not on this machine
    res = subprocess.run([sys.executable, "-m", "mmrag.cli", "ingest", str(root), "--source", "docs"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    if "CLIP weights" not in res.stderr:
        pytest.skip("CLIP's default weights are cached on this machine")
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len([ln for ln in lines if "CLIP weights ViT-B-32/laion2b_s34b_b79k could not be loaded" in ln]) == 1, lines
    assert [ln for ln in lines if ln.startswith("WARNING")] == [ln for ln in lines if "CLIP weights" in ln], lines
    assert not [ln for ln in lines if "ERROR" in ln or "Traceback" in ln or "Warning:" in ln], lines
    assert "indexed 2/2 files" in res.stdout
