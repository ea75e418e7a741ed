"""A throwaway PostgreSQL server (Debian's `postgresql` binaries, installed by scripts/setup.sh) for
the Dagster-on-PostgreSQL tests and benchmarks: data and socket in a temp dir, a free loopback port."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from mmrag.serve.supervisor import free_port

PASSWORD = "pw-" + uuid.uuid4().hex[:12]  # in the URL only: must never reach a file


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@contextlib.contextmanager
def postgres_server():
    """A PostgreSQL server on a free loopback port, data and socket in a temp dir; password auth over
    TCP. Yields a function that creates a new database and returns its URL. None when Debian's
    server binaries are missing."""
    bindir = pg_bin()
    if bindir is None:
        yield None
        return
    import psycopg2

    tmp = Path(tempfile.mkdtemp(prefix="mmrag-pg-"))  # not under pytest's tmp_path (mode 0700, root only)
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        import pwd

        pw = pwd.getpwnam("postgres")
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]

    def run(*cmd: str) -> None:
        res = subprocess.run([*as_user, *cmd], check=False, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, f"{cmd[0]}: {res.stdout[-1500:]}{res.stderr[-1500:]}"

    data, port = tmp / "data", free_port()
    pwfile = tmp / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if as_user:
        os.chown(pwfile, pw.pw_uid, pw.pw_gid)
    run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust",
        "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync")
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {tmp} -c fsync=off -c synchronous_commit=off"
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(tmp / "log"), "-o", opts, "-w", "-t", "60", "start")
    try:
        def new_db() -> str:
            name = "dagster_" + uuid.uuid4().hex[:8]
            conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", password=PASSWORD,
                                    dbname="postgres")
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE {name}")
            conn.close()
            return f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/{name}"

        yield new_db
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       check=False, capture_output=True, timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)


