"""The chat page in a real browser: Debian's chromium, headless, driven by Selenium through Debian's
chromedriver (given explicitly, so Selenium Manager never downloads anything). A module-scoped
`browser` fixture and helpers to ask a question in the page and read what it shows."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"]


def _which(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name) or (name if os.path.isfile(name) and os.access(name, os.X_OK) else None)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    chromium = _which("chromium", "chromium-browser")
    driver = _which("chromedriver", "/usr/lib/chromium/chromedriver")
    if not chromium or not driver:
        pytest.skip("Debian chromium and chromium-driver are not installed (scripts/setup.sh installs them)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    d = webdriver.Chrome(options=opts, service=Service(executable_path=driver))
    try:
        d.set_window_size(1400, 1000)
        yield d
    finally:
        d.quit()


def _wait(driver, what: str, fn, log: Path, timeout: float = 90):
    """Poll fn(driver) until it returns something truthy; fail with the page text and server log."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            got = fn(driver)
            if got:
                return got
        except Exception as e:  # noqa: BLE001 - stale elements while Streamlit re-renders
            last = e
        time.sleep(0.2)
    body = driver.execute_script("return document.body ? document.body.innerText : ''")
    pytest.fail(f"timed out waiting for {what} ({last!r})\npage:\n{body[-3000:]}\nserver log:\n{log.read_text()[-3000:]}")


def _texts(driver, css: str) -> list[str]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).map(e => e.innerText)", css)


def _ask(driver, question: str, turn: int, log: Path) -> list[str]:
    """Type the question into the chat input, send it, and return the texts of the turn's hits
    once every image in them has loaded."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = _wait(driver, "the chat input", lambda d: d.find_element(By.CSS_SELECTOR, "[data-testid=stChatInputTextArea]"), log)
    box.send_keys(question)
    box.send_keys(Keys.ENTER)
    _wait(driver, f"hits of turn {turn}", lambda d: _texts(d, f".st-key-hit-{turn}-1"), log)
    # the script has finished when the "running" widget is gone; then images have their src
    _wait(driver, "the run to finish", lambda d: not d.find_elements(By.CSS_SELECTOR, "[data-testid=stStatusWidget]"), log)
    return _texts(driver, f"[class*='st-key-hit-{turn}-']")


def _loaded_images(driver, turn: int) -> list[dict]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).map("
        "i => ({src: i.src, w: i.naturalWidth, done: i.complete}))", f"[class*='st-key-hit-{turn}-'] img")


def _no_traceback(driver) -> None:
    from selenium.webdriver.common.by import By

    assert not driver.find_elements(By.CSS_SELECTOR, "[data-testid=stException]")
