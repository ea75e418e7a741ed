"""The Dagster instance's dagster.yaml that the CLI writes to $MMRAG_HOME/dagster.

It is the repository's dagster.yaml (SQLite storage under DAGSTER_HOME), with a `storage: postgres:`
section added when MMRAG_DAGSTER_PG_URL is set (`postgresql://user:pass@host:5432/db`): runs, event
logs, schedules/sensors and pool slots then live in that database (dagster-postgres), so the daemon,
the webserver and every CLI run on any host share them. The file names the variable (Dagster's `env:`
indirection), never its value, so no password is written to disk; every process that opens the
instance needs the variable set (`mmrag up` passes its environment on to its children). mmrag makes a
bare `postgresql://` URL name the psycopg2 driver in its own environment (`set_driver`); a Dagster
process started by hand needs `postgresql+psycopg2://`.

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
    project's, with Postgres storage when MMRAG_DAGSTER_PG_URL is set (`mmrag.orchestration.instance`)."""
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
    return home


def dagster_instance(settings: "Settings"):
    """The instance of this data dir (`ensure_dagster_home`)."""
    from dagster import DagsterInstance

    ensure_dagster_home(settings)
    return DagsterInstance.get()

