"""Dagster on PostgreSQL (MMRAG_DAGSTER_PG_URL): the dagster.yaml mmrag writes, a CLI ingest and the
dead-run sensor on a real PostgreSQL server that this module starts in a temp dir (Debian's
`postgresql` package, installed by scripts/setup.sh)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import test_orchestration as orch
from dagster import AssetKey, DagsterInstance, DagsterRunStatus, RunsFilter
from helpers import open_instance_together
from pg_tools import PASSWORD, postgres_server

from mmrag.config import Settings
from mmrag.orchestration.instance import (
    MARKER,
    PG_URL_VAR,
    with_driver,
    write_instance_yaml,
)

pytestmark = pytest.mark.slow  # the fast loop: pytest -m "not slow"

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pg_server():
    """A PostgreSQL server for the module (`pg_tools.postgres_server`): a function making new databases."""
    with postgres_server() as new_db:
        if new_db is None:
            pytest.skip("no PostgreSQL server binaries (initdb): scripts/setup.sh installs the `postgresql` package")
        yield new_db


@pytest.fixture
def pg_url(pg_server):
    """A fresh database's URL, as the README gives it: `postgresql://user:pass@host:port/db`."""
    return pg_server()


@pytest.fixture
def pg_env(pg_url, tmp_path, monkeypatch):
    """mmrag_env on Postgres: MMRAG_DAGSTER_PG_URL on a fresh database, DAGSTER_HOME unset so the CLI's
    ensure_dagster_home writes $MMRAG_HOME/dagster/dagster.yaml (and points DAGSTER_HOME at it)."""
    from mmrag.orchestration.instance import ensure_dagster_home

    for var in [v for v in os.environ if v.startswith("MMRAG_")]:
        monkeypatch.delenv(var)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)  # restored after the test, whatever sets it
    home = tmp_path / "home"
    monkeypatch.setenv("MMRAG_HOME", str(home))
    monkeypatch.setenv("MMRAG_CLIP_PRETRAINED", "random")
    monkeypatch.setenv(PG_URL_VAR, pg_url)
    assert ensure_dagster_home(Settings.from_env()) == (home / "dagster").resolve()
    assert os.environ[PG_URL_VAR] == pg_url.replace("postgresql://", "postgresql+psycopg2://")
    return home


def _assert_postgres(instance) -> None:
    from dagster_postgres import (
        PostgresEventLogStorage,
        PostgresRunStorage,
        PostgresScheduleStorage,
    )

    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
    assert instance.event_log_storage.supports_global_concurrency_limits


def test_generated_dagster_yaml_follows_the_variable(tmp_path):
    """No server needed: the file with and without the variable, a hand-edited file left alone."""
    home, template = tmp_path / "dagster", REPO / "dagster.yaml"
    assert write_instance_yaml(home, template, {}) == "written"
    plain = (home / "dagster.yaml").read_text()
    assert plain.startswith(MARKER + "\n") and "storage:" not in plain
    assert write_instance_yaml(home, template, {}) == "unchanged"
    url = "postgresql://u:secret@db:5432/d"
    assert write_instance_yaml(home, template, {PG_URL_VAR: url}) == "written"
    pg = (home / "dagster.yaml").read_text()
    assert f"env: {PG_URL_VAR}" in pg and "secret" not in pg and pg.startswith(plain)
    assert write_instance_yaml(home, template, {}) == "written"  # unset again: back to SQLite
    assert (home / "dagster.yaml").read_text() == plain
    # A plain copy of the template (what earlier versions wrote) is mmrag's; an edited file is not.
    shutil.copy(template, home / "dagster.yaml")
    assert write_instance_yaml(home, template, {PG_URL_VAR: url}) == "written"
    edited = template.read_text() + "\nretention:\n  schedule:\n    purge_after_days: 7\n"
    (home / "dagster.yaml").write_text(edited)
    assert write_instance_yaml(home, template, {PG_URL_VAR: url}) == "kept"
    assert (home / "dagster.yaml").read_text() == edited


def test_a_bare_postgres_url_names_the_installed_driver():
    assert with_driver("postgresql://u:p@h:5432/d") == "postgresql+psycopg2://u:p@h:5432/d"
    assert with_driver("postgres://u@h/d") == "postgresql+psycopg2://u@h/d"
    assert with_driver("postgresql+psycopg2://u@h/d") == "postgresql+psycopg2://u@h/d"
    assert with_driver("postgresql+psycopg://u@h/d") == "postgresql+psycopg://u@h/d"  # named: kept


def test_instance_from_the_generated_file_is_postgres(pg_env):
    text = (Path(os.environ["DAGSTER_HOME"]) / "dagster.yaml").read_text()
    assert f"env: {PG_URL_VAR}" in text and PASSWORD not in text
    with DagsterInstance.get() as instance:
        _assert_postgres(instance)
        instance.add_dynamic_partitions("source_files", ["docs:x.md"])
    with DagsterInstance.get() as instance:  # a second process's view: the same database
        assert instance.get_dynamic_partitions("source_files") == ["docs:x.md"]
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1  # the template's settings
    assert not list(Path(os.environ["DAGSTER_HOME"]).rglob("*.db"))  # no SQLite storage beside it


def test_cli_ingest_records_its_run_in_postgres(pg_env, pg_url, tmp_path):
    """`mmrag ingest` in its own process, DAGSTER_HOME unset: it writes the instance file itself."""
    root = tmp_path / "docs"
    root.mkdir()
    (root / "a.md").write_text("# Alpha\n\nAlpha counts pochards on the lake.\n")
    (root / "b.md").write_text("# Beta\n\nBeta counts shovelers on the marsh.\n")
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    env.update(HF_HUB_OFFLINE="1", DAGSTER_DISABLE_TELEMETRY="1", PYTHONPATH=str(REPO), **{PG_URL_VAR: pg_url})
    res = subprocess.run([sys.executable, "-m", "mmrag.cli", "ingest", str(root), "--source", "docs", "--json"],
                         env=env, check=False, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    assert '"indexed": 2' in res.stdout
    with DagsterInstance.get() as instance:
        runs = instance.get_runs(filters=RunsFilter(job_name="ingest_job"))
        assert [r.status for r in runs] == [DagsterRunStatus.SUCCESS]
        assert runs[0].tags["mmrag/launched-by"] == "cli"
        assert (runs[0].tags[orch.RANGE[0]], runs[0].tags[orch.RANGE[1]]) == ("docs:a.md", "docs:b.md")
        assert sorted(instance.get_dynamic_partitions("source_files")) == ["docs:a.md", "docs:b.md"]
        mats = instance.fetch_materializations(AssetKey("milvus_partitions"), limit=10).records
        assert {m.partition_key for m in mats} == {"docs:a.md", "docs:b.md"}
    assert not list(Path(os.environ["DAGSTER_HOME"]).rglob("*.db"))


def test_sensor_frees_a_dead_run_on_postgres(pg_env, tmp_path, monkeypatch):
    """tests/test_orchestration.py's dead-run scenario (pool slots, run storage, sensor) on Postgres."""
    with DagsterInstance.get() as instance:
        _assert_postgres(instance)
    orch.test_sensor_frees_a_dead_run_and_requests_its_files_again(pg_env, tmp_path, monkeypatch)
    with DagsterInstance.get() as instance:
        [run] = instance.get_runs()
        assert run.status == DagsterRunStatus.FAILURE
        assert not instance.event_log_storage.get_concurrency_info("mmrag_index").active_run_ids


def test_a_new_postgres_storage_opened_from_several_hosts_at_once(pg_url, tmp_path, monkeypatch):
    """Four processes, each with a data dir of its own (as on four hosts), open the instance on the same
    new PostgreSQL database at the same moment: the advisory lock lets one create Dagster's tables and
    the others find them; all succeed."""
    homes = [tmp_path / f"host{i}" for i in range(4)]
    results = open_instance_together(tmp_path / "go", homes, **{PG_URL_VAR: pg_url})
    for r in results:
        assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]
    monkeypatch.setenv(PG_URL_VAR, with_driver(pg_url))
    with DagsterInstance.from_config(str(homes[0] / "dagster")) as instance:
        _assert_postgres(instance)
        assert len(instance.get_dynamic_partitions("source_files")) == 4
