"""Shared fixtures: an isolated data dir + Dagster home per test, the sample corpus, the fake LLM server."""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from browser_tools import browser  # noqa: F401  (chromium through Selenium, for the chat page's tests)
from corpus_gen import SAMPLE, build_bad  # noqa: F401  (SAMPLE: re-exported for the tests)
from fixtures_llm import openai_server  # noqa: F401  (the loopback OpenAI-compatible server)

REPO = Path(__file__).resolve().parents[1]
# The corpus lives in tests/corpus/ (sources and licences in its README). Tests never change it:
# copy_corpus() into a temp dir first. BAD is built once per session, in a temp dir.
_BAD_TMP = tempfile.mkdtemp(prefix="mmrag-bad-")
atexit.register(shutil.rmtree, _BAD_TMP, ignore_errors=True)
BAD = build_bad(Path(_BAD_TMP) / "bad")

# pytest started with SIGINT ignored (a CI runner, `pytest &` in a script) would otherwise hand every
# child process of the tests an ignored SIGTERM once Dagster ran a job in-process (`mmrag.cli.main`).
from mmrag.cli.main import stoppable_by_signals  # noqa: E402

stoppable_by_signals()

# Offline and quiet for every test: no hub downloads, no Dagster telemetry.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")


# The longest test files first (measured: `--durations=0`, summed per file), so that with two workers
# (`-n 2 --dist loadfile --no-loadscope-reorder`, the README's test command) no long file starts last
# while the other worker has finished; the rest keep their order. (xdist's own reorder, on by default,
# puts the files with the most tests first: the soak, one test of ~5 min, then started last.)
LONGEST_FIRST = ("test_soak.py", "test_crash.py", "test_up.py", "test_lifecycle.py", "test_failures.py",
                 "test_ingest_corpus.py", "test_concurrent_start.py", "test_parse_service.py",
                 "test_orchestration.py", "test_limits.py", "test_media.py", "test_ui.py", "test_up_deployment.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(autouse=True)
def _no_dagster_instance_left_open():
    """A test that opens a Dagster instance (e.g. through a schedule context's `.instance`) must
    close it: an open one stays Dagster's "current defs-state storage" after its test, and a later
    test's `materialize` then fails on the dead instance weakref. Fail the leaking test, by name."""
    from dagster._core.storage.defs_state.base import _current_storage

    before = _current_storage.get()
    yield
    left = _current_storage.get()
    if left is not before:
        _current_storage.set(before)
        pytest.fail("this test left a Dagster instance open (its defs-state storage is still current); "
                    "enter contexts that open one with `with`", pytrace=False)


@pytest.fixture
def mmrag_env(tmp_path, monkeypatch):
    """MMRAG_HOME and DAGSTER_HOME in a temp dir; random CLIP weights (explicitly, for tests)."""
    home = tmp_path / "home"
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    shutil.copy(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    for var in list(os.environ):
        if var.startswith("MMRAG_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("MMRAG_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    monkeypatch.setenv("MMRAG_CLIP_PRETRAINED", "random")
    return home


@contextlib.contextmanager
def isolated_env(tmp: Path):
    """mmrag_env for a module-scoped fixture: MMRAG_HOME/DAGSTER_HOME under `tmp`, random CLIP."""
    with pytest.MonkeyPatch.context() as mp:
        for var in [v for v in os.environ if v.startswith("MMRAG_")]:
            mp.delenv(var)
        (tmp / "dagster").mkdir()
        shutil.copy(REPO / "dagster.yaml", tmp / "dagster" / "dagster.yaml")
        mp.setenv("MMRAG_HOME", str(tmp / "home"))
        mp.setenv("DAGSTER_HOME", str(tmp / "dagster"))
        mp.setenv("MMRAG_CLIP_PRETRAINED", "random")
        yield mp


def run_cli(*args) -> tuple[int, dict]:
    """`mmrag ARGS --json` in-process, outside capsys (for module-scoped fixtures)."""
    from mmrag.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main([*args, "--json"])
    return code, json.loads(buf.getvalue())


def copy_corpus(src: Path, dest: Path, names: list[str] | None = None) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if names is None or f.name in names:
            shutil.copy(f, dest / f.name)
    return dest
