"""The Dagster instance's dagster.yaml that the CLI writes to $MMRAG_HOME/dagster.

It is the repository's dagster.yaml (SQLite storage under DAGSTER_HOME), with a `storage: postgres:`
section added when MMRAG_DAGSTER_PG_URL is set (`postgresql://user:pass@host:5432/db`): runs, event
logs, schedules/sensors and pool slots then live in that database (dagster-postgres), so the daemon,
the webserver and every CLI run on any host share them. The file names the variable (Dagster's `env:`
indirection), never its value, so no password is written to disk; every process that opens the
instance needs the variable set (`mmrag up` passes its environment on to its children). mmrag makes a
bare `postgresql://` URL name the psycopg2 driver in its own environment (`set_driver`); a Dagster
process started by hand needs `postgresql+psycopg2://`.

Its storage is created once, by one process, before any other opens it (`prepare_storage`): Dagster's
SQLite and PostgreSQL storages create their tables and stamp their schema version when first opened,
and two processes doing that at once leave one of them failing (`alembic_version` with two heads, a
UNIQUE constraint, `table ... already exists`): `mmrag up` starting the daemon and the webserver side
by side, or two `mmrag ingest` on a new data dir. Every CLI path goes through `ensure_dagster_home`,
which prepares the storage under a file lock (and, on PostgreSQL, an advisory lock for other hosts)
before it returns.

The file starts with `MARKER` and is written again whenever its content would change, so setting or
unsetting the variable takes effect at the next command. A dagster.yaml without the marker (edited by
hand, or one given with an explicit DAGSTER_HOME) is left alone.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mmrag.files import write_atomic

if TYPE_CHECKING:
    from mmrag.config import Settings

PG_URL_VAR = "MMRAG_DAGSTER_PG_URL"
MARKER = "# Written by mmrag from the repository's dagster.yaml; edits are overwritten (remove this line to keep them)."
REPO_ROOT = Path(__file__).resolve().parents[2]  # workspace.yaml and the template dagster.yaml
REPO_TEMPLATE = REPO_ROOT / "dagster.yaml"
POSTGRES_STORAGE = f"""
# MMRAG_DAGSTER_PG_URL is set: runs, event logs, schedules and pool slots live in PostgreSQL.
storage:
  postgres:
    postgres_url:
      env: {PG_URL_VAR}
"""


def with_driver(url: str) -> str:
    """`url` naming the psycopg2 driver, the one dagster-postgres installs: SQLAlchemy 2.1 reads a bare
    `postgresql://` as psycopg (3), which is not installed. A URL that names a driver is kept."""
    for bare in ("postgresql://", "postgres://"):
        if url.startswith(bare):
            return "postgresql+psycopg2://" + url[len(bare):]
    return url


def set_driver(environ=os.environ) -> None:
    """Rewrite MMRAG_DAGSTER_PG_URL in `environ` with the driver named (`with_driver`), so this process
    and the Dagster processes it starts (`mmrag up`, `mmrag dev`) connect with psycopg2."""
    if url := environ.get(PG_URL_VAR):
        environ[PG_URL_VAR] = with_driver(url)


def instance_yaml(template: str, pg_url: str | None) -> str:
    """The generated file: marker, the template, and the Postgres storage section if `pg_url`."""
    return f"{MARKER}\n{template.rstrip()}\n" + (POSTGRES_STORAGE if pg_url else "")


def write_instance_yaml(home: Path, template: Path = REPO_TEMPLATE, environ=os.environ) -> str:
    """Create or refresh `home`/dagster.yaml. Returns what happened: "written", "unchanged", or
    "kept" (a file mmrag did not write; left as it is). A plain copy of the template (what earlier
    versions wrote) counts as mmrag's."""
    target = home / "dagster.yaml"
    if not template.exists():
        return "kept" if target.exists() else "unchanged"
    text = template.read_text()
    want = instance_yaml(text, environ.get(PG_URL_VAR) or None)
    if target.exists():
        have = target.read_text()
        if have == want:
            return "unchanged"
        if not have.startswith(MARKER) and have != text:
            return "kept"
    home.mkdir(parents=True, exist_ok=True)
    write_atomic(target, want)  # another process never reads half a file
    return "written"


def uses_pg_url(home: Path) -> bool:
    """Whether `home`/dagster.yaml reads its storage from MMRAG_DAGSTER_PG_URL."""
    try:
        return PG_URL_VAR in (home / "dagster.yaml").read_text()
    except OSError:
        return False


def ensure_dagster_home(settings: "Settings") -> Path:
    """Point DAGSTER_HOME at $MMRAG_HOME/dagster (unless set) and write its dagster.yaml there: the
    project's, with Postgres storage when MMRAG_DAGSTER_PG_URL is set (`mmrag.orchestration.instance`);
    then create its storage once (`prepare_storage`)."""
    set_driver(os.environ)
    if os.environ.get("DAGSTER_HOME"):
        home = Path(os.environ["DAGSTER_HOME"])
    else:
        home = (settings.home / "dagster").resolve()
        home.mkdir(parents=True, exist_ok=True)
        write_instance_yaml(home, REPO_TEMPLATE)
        os.environ["DAGSTER_HOME"] = str(home)
    if os.environ.get(PG_URL_VAR) and not uses_pg_url(home):
        print(f"mmrag: {PG_URL_VAR} is set but {home / 'dagster.yaml'} (not written by mmrag) does not use it: "
              "the instance keeps the storage that file names (delete it to have mmrag write it)", file=sys.stderr)
    prepare_storage(home)
    return home


STORAGE_READY = ".mmrag-storage-ready"  # what prepared the storage: Dagster's version and the yaml
STORAGE_LOCK = ".mmrag-storage.lock"
PG_INIT_LOCK_KEY = 7_401_337_029  # pg_advisory_lock key of "the storage of this database is being created"


def _storage_signature(home: Path) -> str:
    import dagster

    try:
        text = (home / "dagster.yaml").read_text()
    except OSError:
        text = ""
    return f"dagster {dagster.__version__}\n{text}"


def prepare_storage(home: Path, timeout_s: float = 600.0) -> bool:
    """Create the instance's storage (runs, event log, schedules) in this process,
    once per DAGSTER_HOME and dagster.yaml, while every other mmrag process on the machine waits for it
    (a `filelock` in `home`), and, with PostgreSQL storage, while processes of other hosts do (an
    advisory lock in that database). Returns whether this call created or checked it (False: it was
    ready). A process started by hand (`dagster dev`) still opens it itself."""
    from filelock import FileLock

    ready = home / STORAGE_READY
    want = _storage_signature(home)
    if ready.exists() and ready.read_text() == want:
        return False
    home.mkdir(parents=True, exist_ok=True)
    with FileLock(str(home / STORAGE_LOCK), timeout=timeout_s):
        if ready.exists() and ready.read_text() == want:
            return False
        with _pg_init_lock(home):
            from dagster import DagsterInstance

            instance = DagsterInstance.from_config(str(home))
            try:
                # each storage creates its tables when built; the pools' slots are Dagster's to make at
                # their first claim (initializing them here would reset a limit someone raised)
                instance.schedule_storage  # noqa: B018
                instance.event_log_storage  # noqa: B018
            finally:
                instance.dispose()
        write_atomic(ready, want)
    return True


class _pg_init_lock:
    """The PostgreSQL advisory lock that makes processes on every host create Dagster's tables one at a
    time (nothing when the storage is SQLite). dagster-postgres retries a creation that loses a race
    itself (four data dirs opening one new database at once: 3 rounds of 3 passed without this lock,
    where SQLite failed every round); the lock makes it so rather than likely."""

    def __init__(self, home: Path):
        self.url = os.environ.get(PG_URL_VAR) if uses_pg_url(home) else None
        self.engine = self.conn = None

    def __enter__(self):
        if self.url:
            import sqlalchemy as sa

            self.engine = sa.create_engine(with_driver(self.url), poolclass=sa.pool.NullPool)
            self.conn = self.engine.connect()
            self.conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": PG_INIT_LOCK_KEY})
        return self

    def __exit__(self, *exc):
        if self.conn is not None:
            import sqlalchemy as sa

            try:
                self.conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": PG_INIT_LOCK_KEY})
            finally:
                self.conn.close()
                self.engine.dispose()
        return False


def dagster_instance(settings: "Settings"):
    """The instance of this data dir (`ensure_dagster_home`)."""
    from dagster import DagsterInstance

    ensure_dagster_home(settings)
    return DagsterInstance.get()

