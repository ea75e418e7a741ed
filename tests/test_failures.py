"""Failures by kind, fields the stores bound, ids that do not depend on the data dir, and a model
server that fails or talks nonsense: through the real CLI, Dagster, Milvus Lite and LightRAG."""

from __future__ import annotations

import contextlib
import random
import shutil
import time
from pathlib import Path

import pytest
from conftest import BAD, SAMPLE, copy_corpus
from crash_tools import dangling, diff, index_state
from helpers import cli_json
from openai_server import Fault, lightrag_aware, prompt_text


def _runs(kind: str = "ingest_job") -> int:
    from dagster import DagsterInstance, RunsFilter

    return len(DagsterInstance.get().get_runs(filters=RunsFilter(job_name=kind)))


def _status(capsys) -> dict[str, dict]:
    _, st = cli_json(capsys, "status")
    return {f["path"]: f for f in st["sources"]["docs"]["files"]}


@pytest.mark.slow
def test_content_failures_wait_for_new_content_and_retry_failed_forces(mmrag_env, tmp_path, capsys):
    root = copy_corpus(BAD, tmp_path / "docs", ["password_protected.pdf", "truncated.pdf", "empty.pdf"])
    (root / "good.md").write_text("# Good\n\nA good file about herons.\n")
    code, out = cli_json(capsys, "ingest", str(root), "--source", "docs")
    assert code == 1 and out["indexed"] == 1 and len(out["failed"]) == 2 and len(out["skipped"]) == 1
    st = _status(capsys)
    assert st["password_protected.pdf"]["failure_kind"] == "content" and st["truncated.pdf"]["failure_kind"] == "content"
    runs = _runs()

    code, again = cli_json(capsys, "ingest", str(root), "--source", "docs")  # nothing to redo: no run at all
    assert _runs() == runs and again["failed"] == out["failed"] and code == 1
    _, status = cli_json(capsys, "status")
    assert status["sources"]["docs"]["stale"] == []

    code, forced = cli_json(capsys, "ingest", str(root), "--source", "docs", "--retry-failed")
    assert _runs() == runs + 1 and len(forced["failed"]) == 2  # parsed again, failed again
    shutil.copy(SAMPLE / "multi_page.pdf", root / "truncated.pdf")  # new content: redone without asking
    code, fixed = cli_json(capsys, "ingest", str(root), "--source", "docs")
    assert _runs() == runs + 2 and fixed["indexed"] == 2 and [f["path"] for f in fixed["failed"]] == ["password_protected.pdf"]


@pytest.mark.slow
def test_graph_failures_are_transient_and_retried_after_their_backoff(mmrag_env, tmp_path, capsys, openai_server,
                                                                      monkeypatch):
    for k, v in {"MMRAG_LLM_URL": openai_server.base_url, "MMRAG_LLM_MODEL": "fake-llm", "MMRAG_LLM_RETRIES": "0",
                 "MMRAG_RETRY_BACKOFF_S": "2"}.items():
        monkeypatch.setenv(k, v)
    openai_server.responder = lightrag_aware
    openai_server.fault_fn = lambda rec: Fault(status=503, message="overloaded")
    root = tmp_path / "docs"
    root.mkdir()
    (root / "a.md").write_text("# Alpha\n\nAlpha Station counts Pochards.\n")
    code, out = cli_json(capsys, "ingest", str(root), "--source", "docs")
    assert code == 1 and "overloaded" in out["failed"][0]["error"]
    f = _status(capsys)["a.md"]
    assert f["status"] == "failed" and f["failure_kind"] == "transient" and f["attempts"] == 1
    time.sleep(f["retry_at"] - time.time() + 0.1)
    cli_json(capsys, "ingest", str(root), "--source", "docs")  # still down: the backoff doubles
    f = _status(capsys)["a.md"]
    assert f["attempts"] == 2 and 3 < f["retry_at"] - time.time() <= 4
    openai_server.fault_fn = None
    runs = _runs()
    cli_json(capsys, "ingest", str(root), "--source", "docs")
    assert _runs() == runs  # within its backoff: not yet
    time.sleep(f["retry_at"] - time.time() + 0.1)
    code, out = cli_json(capsys, "ingest", str(root), "--source", "docs")
    assert code == 0 and out["indexed"] == 1 and _runs() == runs + 1 and out["graph_nodes"] > 1


@pytest.mark.slow
def test_nul_bytes_long_names_and_long_paths_are_bounded(mmrag_env, tmp_path, capsys):
    """A heading of 2,000 characters with NUL bytes and a path longer than LightRAG's 64-byte document
    id field: both files are indexed; every graph name fits the 512-byte VARCHAR."""
    root = tmp_path / "docs"
    deep = root / ("folder-with-a-long-name-" * 3) / "and-another-one-below-it"
    deep.mkdir(parents=True)
    (root / "nul.md").write_bytes(b"# " + b"Heading\x00with NUL bytes " * 90 + b"\n\nBody text about avocets.\n")
    (deep / "report-of-the-annual-waterfowl-census-final.md").write_text("# Census\n\nShovelers and wigeons.\n")
    code, out = cli_json(capsys, "ingest", str(root), "--source", "docs")
    assert code == 0 and out["indexed"] == 2, out
    state = index_state(Path(mmrag_env))
    names = list(state["graph"]["nodes"])
    assert max(len(n.encode()) for n in names) <= 512
    assert not any("\x00" in n for n in names)
    assert not dangling(state)


def test_row_ids_do_not_depend_on_where_the_data_dir_lives(tmp_path):
    from mmrag.index.stages import embed_stage, milvus_rows, parse_stage, snapshot_file
    from mmrag.models.embedders import TextEmbedder
    from mmrag.parsing import parse_file
    from mmrag.sources.blobs import BlobStore

    emb = TextEmbedder()
    ids = []
    for home in (tmp_path / "one", tmp_path / "elsewhere" / "two"):
        blobs = BlobStore(home / "blobs")
        raw = snapshot_file("docs:pic.pptx", "docs", str(SAMPLE), "powerpoint_with_image.pptx", blobs)
        doc = parse_stage(raw, lambda path, det, **kw: parse_file(path, det, blobs, **kw))
        text_rows, _ = milvus_rows(embed_stage(doc, raw, emb, None, 180, 30))
        assert any(r.image_path for r in text_rows)
        ids.append(sorted(r.id for r in text_rows))
    assert ids[0] == ids[1]


@contextlib.contextmanager
def _home(tmp: Path, monkeypatch):
    from mmrag_resources.lightrag import close_stores

    close_stores()
    (tmp / "dagster").mkdir(parents=True)
    shutil.copy(Path(__file__).resolve().parents[1] / "dagster.yaml", tmp / "dagster")
    monkeypatch.setenv("MMRAG_HOME", str(tmp))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp / "dagster"))
    try:
        yield tmp
    finally:
        close_stores()


@pytest.mark.slow
def test_model_server_faults_then_a_healthy_server_give_a_clean_run_s_index(mmrag_env, tmp_path, capsys,
                                                                            openai_server, monkeypatch):
    """30 % of requests fail (HTTP 500, timeouts, replies cut short, garbage: control characters,
    empty, or not in LightRAG's extraction format); then the server is healthy and the next sync retries what failed: the index ends equal
    to that of a run against a healthy server."""
    for k, v in {"MMRAG_LLM_URL": openai_server.base_url, "MMRAG_LLM_MODEL": "fake-llm",
                 "MMRAG_VLM_MODEL": "fake-vlm", "MMRAG_LLM_RETRIES": "1", "MMRAG_LLM_TIMEOUT_S": "1",
                 "MMRAG_RETRY_BACKOFF_S": "0.1"}.items():
        monkeypatch.setenv(k, v)
    root = copy_corpus(SAMPLE, tmp_path / "docs", ["duck.md", "table_06.html", "example_image_01.png"])
    rng = random.Random(7)
    faults = {"status": 0, "hang": 0, "malformed": 0, "garbage": 0}

    def fault(rec):
        r = rng.random()
        if r < 0.12:
            faults["status"] += 1
            return Fault(status=500)
        if r < 0.17:
            faults["hang"] += 1
            return Fault("hang", seconds=3)
        if r < 0.20:
            faults["malformed"] += 1  # a reply cut short: not JSON
            return Fault("malformed")
        return None

    def garbage_sometimes(request_json):
        if rng.random() < 0.10 / 0.80:  # 10 % of all requests: garbage with HTTP 200
            faults["garbage"] += 1
            if "<|COMPLETE|>" in prompt_text(request_json) and rng.random() < 0.5:
                return "Sure! The entities are: Mallard, Teal."  # not LightRAG's extraction format
            return rng.choice(["\x00\x07 \x1b[31mERR\x01\x02", "   "])  # control characters, empty
        return lightrag_aware(request_json)

    with _home(tmp_path / "faulty", monkeypatch) as faulty:
        openai_server.responder, openai_server.fault_fn = garbage_sometimes, fault
        openai_server.malformed_next(1)  # one of each kind for sure, then at random
        openai_server.hang_next(1, seconds=3)
        openai_server.fail_next(1)
        faults["status"] += 1
        faults["hang"] += 1
        faults["malformed"] += 1
        cli_json(capsys, "ingest", str(root), "--source", "docs")
        assert all(faults.values()), faults
        openai_server.responder, openai_server.fault_fn = lightrag_aware, None
        time.sleep(0.2)
        code, out = cli_json(capsys, "ingest", str(root), "--source", "docs")
        for _ in range(3):  # a file can fail in a later step after an earlier one succeeded
            if code == 0 and not any(f["status"] != "indexed" for f in _status(capsys).values()):
                break
            time.sleep(0.2)
            code, out = cli_json(capsys, "ingest", str(root), "--source", "docs")
        assert code == 0 and out["indexed"] == 3, out
        got = index_state(faulty, cache=False)
    with _home(tmp_path / "clean", monkeypatch) as clean:
        code, out = cli_json(capsys, "ingest", str(root), "--source", "docs")
        assert code == 0 and out["indexed"] == 3
        want = index_state(clean, cache=False)
    assert not dangling(got)
    assert not (d := diff(want, got)), "\n".join(d)
    assert not any("\x00" in n or "ERR" in n or "Sure!" in n for n in got["graph"]["nodes"])
