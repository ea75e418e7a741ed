"""The chat page (`mmrag ui`) in a real browser (chromium through Selenium: `browser_tools`).

A small folder is ingested once by a CLI subprocess: Milvus Lite locks its data dir for the process
that opens it until that process exits, and the Streamlit server is another process. Each test then
starts `mmrag ui` on a free port, asks a question in the page and reads what it shows.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
from browser_tools import _ask, _loaded_images, _no_traceback, _texts, _wait
from conftest import REPO, SAMPLE, copy_corpus
from helpers import free_port, wait_ready
from openai_server import FakeOpenAIServer

QUESTION = "What does the duck eat?"
ANSWER = "Ducks eat leaves, berries and grain [1]."


def _env(home: Path, dagster_home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMRAG_")}
    env.update(MMRAG_HOME=str(home), DAGSTER_HOME=str(dagster_home), MMRAG_CLIP_PRETRAINED="random",
               HF_HUB_OFFLINE="1", DAGSTER_DISABLE_TELEMETRY="1", **extra)
    return env


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    """A duck page and a picture, ingested by a CLI subprocess (which exits, freeing Milvus Lite)."""
    tmp = tmp_path_factory.mktemp("ui")
    dagster_home = tmp / "dagster"
    dagster_home.mkdir()
    shutil.copy(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    root = copy_corpus(SAMPLE, tmp / "docs", ["duck.md", "example_image_01.png"])
    env = _env(tmp / "home", dagster_home)
    res = subprocess.run([sys.executable, "-m", "mmrag.cli", "ingest", str(root), "--source", "docs", "--json"],
                         env=env, cwd=tmp, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)
    assert out["indexed"] == 2 and out["image_rows"] >= 1, out
    return tmp, env


@contextmanager
def ui_server(tmp: Path, env: dict[str, str]):
    """`mmrag ui` on a free port; yields its URL once /_stcore/health says ok; stops it afterwards."""
    port = free_port()
    log = tmp / f"ui-{port}.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "mmrag.cli", "ui", "--port", str(port)], env=env, cwd=tmp,
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
            return r.read().decode().strip() == "ok"

    try:
        wait_ready("mmrag ui", healthy, proc, 60, lambda: log.read_text()[-3000:])
        yield url, log
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and anything it started
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


@pytest.mark.slow
def test_page_loads_asks_and_shows_hits_and_an_image(index, browser):
    tmp, env = index
    with ui_server(tmp, env) as (url, log):
        browser.get(url)
        _wait(browser, "the title", lambda d: "mmrag chat" in _texts(d, "h1"), log)
        assert browser.title == "mmrag chat"
        _wait(browser, "the sidebar", lambda d: "Answer with the LLM" in "".join(_texts(d, "[data-testid=stSidebar]")), log)

        hits = _ask(browser, QUESTION, 1, log)
        assert any("docs:duck.md" in h for h in hits), hits
        image_hits = [h for h in hits if "docs:example_image_01.png" in h and "image" in h]
        assert image_hits, hits
        imgs = _wait(browser, "an image hit's picture to load",
                     lambda d: [i for i in _loaded_images(d, 1) if i["done"] and i["w"] > 0], log)
        assert imgs[0]["src"].startswith(url + "/media/"), imgs
        assert "no LLM configured" in _texts(browser, ".st-key-answer-1")[0]
        _no_traceback(browser)


@pytest.mark.slow
def test_answer_cites_hits_and_llm_errors_show_as_messages(index, browser):
    tmp, env = index
    with FakeOpenAIServer() as fake:
        fake.responder = lambda req: ANSWER
        llm_env = {**env, "MMRAG_LLM_URL": fake.base_url, "MMRAG_LLM_MODEL": "fake-llm",
                   "MMRAG_VLM_MODEL": "fake-vlm", "MMRAG_LLM_RETRIES": "0"}
        with ui_server(tmp, llm_env) as (url, log):
            browser.get(url)
            _wait(browser, "the title", lambda d: "mmrag chat" in _texts(d, "h1"), log)

            hits = _ask(browser, QUESTION, 1, log)
            answer = _texts(browser, ".st-key-answer-1")[0]
            assert ANSWER in answer and "answered by fake-" in answer, answer
            assert "cited" in hits[0] and not any("cited" in h for h in hits[1:]), hits
            sent = fake.chat_requests()
            assert sent and QUESTION in json.dumps(sent[-1]), sent

            fake.fail_next(1, status=500, message="the GPU is on fire")
            _ask(browser, "Which berries does the duck like?", 2, log)
            err = _wait(browser, "the LLM error", lambda d: _texts(d, ".st-key-answer-2 [data-testid=stAlert]"), log)
            assert "No answer" in err[0] and "GPU is on fire" in err[0], err
            _no_traceback(browser)


@pytest.mark.slow
def test_with_api_keys_the_page_asks_for_one_and_searches_only_its_sources(index, browser):
    """MMRAG_API_KEYS set: no search without a valid key; a key scoped to another source finds nothing
    of `docs`; a key for `docs` finds the duck page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    tmp, env = index
    other_key, docs_key = "page-key-elsewhere-01", "page-key-docs-02"
    with ui_server(tmp, {**env, "MMRAG_API_KEYS": f"{other_key}=elsewhere;{docs_key}=docs"}) as (url, log):
        browser.get(url)
        _wait(browser, "the key prompt", lambda d: "Enter your API key" in "".join(_texts(d, "[data-testid=stSidebar]")),
              log)
        _wait(browser, "a disabled chat input", lambda d: d.find_element(
            By.CSS_SELECTOR, "[data-testid=stChatInputTextArea]").get_attribute("disabled"), log)

        def use_key(key: str) -> None:
            box = browser.find_element(By.CSS_SELECTOR, "[data-testid=stSidebar] input[type=password]")
            box.send_keys(Keys.CONTROL, "a")
            box.send_keys(key, Keys.ENTER)

        def chat_enabled(d) -> bool:
            return not d.find_element(By.CSS_SELECTOR, "[data-testid=stChatInputTextArea]").get_attribute("disabled")

        use_key("not-a-key")
        _wait(browser, "the refusal", lambda d: "valid API key" in "".join(_texts(d, "[data-testid=stSidebar]")), log)
        assert not chat_enabled(browser)
        use_key(other_key)
        _wait(browser, "the chat input enabled", chat_enabled, log)
        box = browser.find_element(By.CSS_SELECTOR, "[data-testid=stChatInputTextArea]")
        box.send_keys(QUESTION, Keys.ENTER)
        _wait(browser, "an empty result", lambda d: "Nothing in the index matches" in "".join(_texts(d, ".st-key-turn-1")),
              log)
        assert not _texts(browser, "[class*='st-key-hit-1-']")
        use_key(docs_key)
        hits = _ask(browser, QUESTION, 2, log)
        assert any("docs:duck.md" in h for h in hits), hits
        _no_traceback(browser)
