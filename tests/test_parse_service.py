"""The warm parse service (`mmrag parse-server`, `mmrag.parsing.service`): real parse workers (Docling)
behind a real socket. Files parsed through it are the files a run's own worker parses, its limits still
apply, it reads nothing outside the watched folders and the blob store, a run that finds it gone or busy
parses with a worker of its own, and a service killed (SIGKILL) while it parses a file fails that file
transiently; the next run indexes it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from multiprocessing.connection import Listener
from pathlib import Path

import pytest
from conftest import REPO, SAMPLE, copy_corpus
from helpers import free_port, wait_ready

from mmrag.config import Settings
from mmrag.manifest import Manifest
from mmrag.parsing.errors import ParseError
from mmrag.parsing.limits import LimitExceeded
from mmrag.parsing.service import (
    ParseClient,
    ParseService,
    config_key,
    supervised_parser,
)
from mmrag.parsing.worker import ParseSupervisor, WorkerConfig
from mmrag.serve import discovery
from mmrag.sources.filetypes import detect


def _ident(name: str) -> dict:
    return {"file_key": f"docs:{name}", "source": "docs", "rel_path": name, "content_hash": "0" * 64}


def _blocks(doc) -> list[tuple]:
    return [(b.kind.value, b.text, b.page, b.order) for b in doc.blocks]


@pytest.fixture
def served(tmp_path):
    """A ParseService (one worker, warmed) on a loopback socket, watching `docs`."""
    docs = copy_corpus(SAMPLE, tmp_path / "docs", ["duck.md", "word_sample.docx", "table_06.html"])
    manifest = Manifest(tmp_path / "state.db")
    manifest.set_source("docs", str(docs))
    config = WorkerConfig.from_settings(Settings.from_env().with_(pdf_parser="pypdfium2"), str(tmp_path / "blobs"))
    service = ParseService(config, tmp_path / "state.db", workers=1)
    service.start()
    listener = Listener(("127.0.0.1", 0))
    stop = threading.Event()
    thread = threading.Thread(target=service.serve, args=(listener, stop, b"k" * 32), daemon=True)
    thread.start()
    yield {"service": service, "address": listener.address, "config": config, "docs": docs, "tmp": tmp_path}
    stop.set()
    listener.close()
    service.close()


def test_the_service_parses_what_the_run_would_and_keeps_its_limits(served):
    docs, config = served["docs"], served["config"]
    service_pid = served["service"]._idle[0][0].pid
    assert service_pid  # warmed before it served anything
    local_calls = []

    def local():
        local_calls.append(1)
        return ParseSupervisor(config)

    # A connection that says nothing, and one with a wrong key, hold up nobody; the wrong key is refused.
    import socket
    from multiprocessing import AuthenticationError
    from multiprocessing.connection import Client

    silent = socket.create_connection(served["address"])
    with pytest.raises(AuthenticationError):
        Client(served["address"], authkey=b"x" * 32)

    with ParseClient(served["address"], b"k" * 32, local, limits=config.limits) as client, ParseSupervisor(config) as own:
        for name in ("duck.md", "word_sample.docx", "table_06.html"):
            path = docs / name
            det = detect(path)
            got = client.parse(path, det, **_ident(name))
            want = own.parse(path, det, **_ident(name))
            assert _blocks(got) == _blocks(want) and got.parser == want.parser, name
            assert len(got.blocks) > 1
        assert client.served == 3 and not local_calls and served["service"].parsed == 3

        # The service reads nothing outside the watched folders and the blob store.
        outside = served["tmp"] / "elsewhere.md"
        outside.write_text("# Secret\n\nnot watched\n")
        with pytest.raises(ParseError, match="outside the watched folders"):
            client.parse(outside, detect(outside), **_ident("elsewhere.md"))

        # A per-file limit applies in the service as in a run's worker (the error comes back as itself).
        deep = docs / "deep.md"
        deep.write_text("> " * 300 + "too deep\n")
        with pytest.raises(LimitExceeded) as over:
            client.parse(deep, detect(deep), **_ident("deep.md"))
        assert over.value.setting == "MMRAG_MAX_NESTING"

        # Busy (its one worker taken, here by the test): the run parses the file with a worker of its own.
        taken = served["service"]._acquire(0)
        client.busy_wait_s = 0.2
        got = client.parse(docs / "duck.md", detect(docs / "duck.md"), **_ident("duck.md"))
        assert local_calls == [1] and client.pid is not None and len(got.blocks) > 1
        served["service"]._release(taken)
    silent.close()


def test_a_run_finds_the_service_by_its_configuration_and_falls_back_when_it_is_gone(tmp_path):
    config = WorkerConfig.from_settings(Settings.from_env().with_(pdf_parser="pypdfium2"), str(tmp_path / "blobs"))
    home = tmp_path / "home"
    assert isinstance(supervised_parser(config, home), ParseSupervisor)  # nothing announced
    port = free_port()  # nothing listens there
    discovery.announce(home, discovery.PARSE, {"address": ["127.0.0.1", port], "authkey": "ab" * 32,
                                               "config": config_key(config)}, private=True)
    assert (home / discovery.PARSE).stat().st_mode & 0o777 == 0o600
    client = supervised_parser(config, home)
    assert isinstance(client, ParseClient) and client.address == ("127.0.0.1", port)
    other = WorkerConfig.from_settings(Settings.from_env().with_(pdf_parser="docling"), str(tmp_path / "blobs"))
    assert isinstance(supervised_parser(other, home), ParseSupervisor)  # another configuration: not its service
    assert isinstance(supervised_parser(config, home, use_service=False), ParseSupervisor)

    docs = copy_corpus(SAMPLE, tmp_path / "docs", ["duck.md"])
    with client:
        doc = client.parse(docs / "duck.md", detect(docs / "duck.md"), **_ident("duck.md"))
        assert len(doc.blocks) > 1 and client.served == 0 and client.pid is not None  # its own worker


def _env(tmp: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMRAG_") and k != "DAGSTER_HOME"}
    env.update(MMRAG_HOME=str(tmp / "home"), DAGSTER_HOME=str(tmp / "dagster"), MMRAG_CLIP_PRETRAINED="random",
               HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), MMRAG_RETRY_BACKOFF_S="0", **extra)
    (tmp / "dagster").mkdir(exist_ok=True)
    (tmp / "dagster" / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    return env


def _cli(env: dict, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmrag.cli", *args], env=env, capture_output=True, text=True,
                          timeout=600)


def _files(env: dict) -> dict:
    out = json.loads(_cli(env, "status", "--json").stdout)
    return {f["path"]: f for f in out["sources"]["docs"]["files"]}


@pytest.mark.slow
def test_a_service_killed_while_it_parses_fails_the_file_transiently_and_the_next_run_indexes_it(tmp_path):
    docs = copy_corpus(SAMPLE, tmp_path / "docs", ["duck.md", "table_06.html"])
    env = _env(tmp_path)
    assert _cli(env, "ingest", str(docs), "--source", "docs", "--json").returncode == 0  # registers the source
    (docs / "coots.md").write_text("# Coots\n\nCoots patter across the water before they take off.\n")
    (docs / "grebes.md").write_text("# Grebes\n\nGrebes build floating nests of reeds.\n")

    # The service parses the run's first file, and is killed (SIGKILL, by itself) when it takes the second.
    log = tmp_path / "parse.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mmrag.cli", "parse-server"], stdout=out,
                                stderr=subprocess.STDOUT, env={**env, "MMRAG_CRASH_AT": "parse-service:2"})
    home = tmp_path / "home"
    wait_ready("mmrag parse-server", lambda: discovery.lookup(home, discovery.PARSE) is not None, proc, 180,
               lambda: log.read_text()[-3000:])
    res = _cli(env, "ingest", str(docs), "--source", "docs", "--json")
    assert res.returncode == 1, res.stderr[-3000:]  # EXIT_FAILED_FILES: the run went through
    assert proc.wait(30) == -9, log.read_text()
    said = log.read_text()
    assert "docs:coots.md (markdown): parsed in" in said and "killing this process" in said, said
    files = _files(env)
    assert files["coots.md"]["status"] == "indexed"
    assert files["grebes.md"]["status"] == "failed" and files["grebes.md"]["failure_kind"] == "transient"
    assert "parse service went away" in files["grebes.md"]["reason"]
    assert discovery.lookup(home, discovery.PARSE) is None  # its owner is dead: nobody is sent there

    # The next run (after the backoff, here 0 s) parses it with a worker of its own.
    res = _cli(env, "ingest", str(docs), "--source", "docs", "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    files = _files(env)
    assert {f["status"] for f in files.values()} == {"indexed"} and files["grebes.md"]["text_rows"] >= 1
