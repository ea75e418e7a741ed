"""The README's screenshots of the Dagster UI: the per-file asset checks, the index audit and a run's
model usage, taken from a real index in a temp dir.

A small folder (three Markdown files and a picture) is ingested with the chat model on the tests'
loopback OpenAI-compatible server (so the usage figures are real counts of its replies); a Milvus
row is then deleted and the `index_audit` asset materialized, so the audit has a difference to show.
`dagster-webserver` serves that instance and headless chromium (Selenium, Debian's chromedriver)
saves the pages to docs/img/.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/screenshots.py [--out docs/img]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"):
        opts.add_argument(flag)
    driver = shutil.which("chromedriver") or "/usr/lib/chromium/chromedriver"
    d = webdriver.Chrome(options=opts, service=Service(executable_path=driver))
    d.set_window_size(1500, 1000)
    return d


def _shoot(d, url: str, text: str, path: Path, timeout: float = 60.0) -> None:
    d.get(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = d.execute_script("return document.body ? document.body.innerText : ''")
        if text in body:
            break
        time.sleep(0.5)
    else:
        print(f"warning: {text!r} not seen on {url}", file=sys.stderr)
    from selenium.webdriver.common.by import By

    for button in d.find_elements(By.XPATH, "//button[normalize-space()='Skip']"):  # Dagster's newsletter prompt
        button.click()
    time.sleep(2)  # let the page finish drawing
    d.save_screenshot(str(path))
    print(f"saved {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="mmrag-shots-"))
    (tmp / "dagster").mkdir()
    shutil.copy(REPO / "dagster.yaml", tmp / "dagster" / "dagster.yaml")
    for k in [k for k in os.environ if k.startswith("MMRAG_")]:
        del os.environ[k]
    os.environ.update(MMRAG_HOME=str(tmp / "home"), DAGSTER_HOME=str(tmp / "dagster"), HF_HUB_OFFLINE="1",
                      MMRAG_CLIP_PRETRAINED="random", DAGSTER_DISABLE_TELEMETRY="1")
    from openai_server import FakeOpenAIServer, lightrag_aware, prompt_text

    server = FakeOpenAIServer(models=("Qwen2.5-VL-7B-Instruct",)).start()
    server.responder = lambda req: (lightrag_aware(req) if "<|COMPLETE|>" in prompt_text(req)
                                    else "A bar chart of pond birds counted per month.")
    os.environ.update(MMRAG_LLM_URL=server.base_url, MMRAG_LLM_MODEL="Qwen2.5-VL-7B-Instruct")
    root = tmp / "field-notes"
    root.mkdir()
    (root / "mallards.md").write_text("# Mallards\n\nMallards dabble at the surface of shallow ponds.\n")
    (root / "falcons.md").write_text("# Falcons\n\nThe peregrine falcon dives at over 300 km/h.\n")
    (root / "penguins.md").write_text("# Penguins\n\nEmperor penguins huddle through the winter.\n")
    shutil.copy(REPO / "tests" / "corpus" / "sample" / "example_image_01.png", root / "chart.png")
    web = None
    try:
        from mmrag.cli import main as mmrag

        assert mmrag(["ingest", str(root), "--json"]) == 0
        from dagster import DagsterInstance

        from mmrag.config import Settings
        from mmrag.definitions import defs
        from mmrag.index.milvus_store import TEXT
        from mmrag.models import factory

        st = factory.milvus_store(Settings.from_env())
        ids = st.ids_for_file(TEXT, "field-notes:falcons.md")
        st.client.delete(st.collection(TEXT), ids=ids[:1])
        st.flush()
        factory.close_graph_stores()
        with DagsterInstance.get() as instance:
            defs.resolve_job_def("audit_job").execute_in_process(instance=instance, raise_on_error=False)
        port = _free_port()
        log = open(tmp / "web.log", "w")
        web = subprocess.Popen([str(Path(sys.executable).parent / "dagster-webserver"), "-w", str(REPO / "workspace.yaml"),
                                "-h", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        base = f"http://127.0.0.1:{port}"
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{base}/server_info", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        d = _browser()
        try:
            _shoot(d, f"{base}/assets/milvus_partitions?view=checks", "rows_match_stage_output",
                   a.out / "asset-checks.png")
            _shoot(d, f"{base}/assets/index_audit", "differences", a.out / "index-audit.png")
            _shoot(d, f"{base}/runs", "mmrag/usage", a.out / "run-usage.png")
        finally:
            d.quit()
    finally:
        if web is not None:
            web.terminate()
            web.wait(30)
        server.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
