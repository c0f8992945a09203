"""A throwaway PostgreSQL cluster for the tests (Debian's `postgresql` package).

`CORRAL_TEST_POSTGRES_URL` points the tests at an existing server instead; its user must be
allowed to create databases. A missing PostgreSQL fails the tests: it is never a skip.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from harness import free_port

ENV_URL = "CORRAL_TEST_POSTGRES_URL"


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    pytest.fail(f"PostgreSQL is not installed (apt-get install postgresql), and {ENV_URL} is not set")


@contextlib.contextmanager
def postgres_cluster() -> Iterator[str]:
    """Yield the admin URL of a server: `CORRAL_TEST_POSTGRES_URL`, or a new cluster in a temp dir."""
    if os.environ.get(ENV_URL):
        yield os.environ[ENV_URL]
        return
    bindir = _bindir()
    root = Path(tempfile.mkdtemp(prefix="corral-pg-"))
    # initdb refuses to run as root: run the server as the postgres user, in a directory it owns.
    as_user: list[str] = []
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        os.chown(root, account.pw_uid, account.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, logfile = root / "data", root / "server.log"
    try:
        subprocess.run(
            [*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"],
            check=True,
            capture_output=True,
        )
        for _attempt in range(5):
            port = free_port()
            options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root}"
            pg_ctl = [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(logfile)]
            started = subprocess.run(
                [*pg_ctl, "-o", options + " -c fsync=off", "-w", "-t", "120", "start"], capture_output=True
            )
            if started.returncode == 0:
                break
        else:
            pytest.fail(f"PostgreSQL did not start: {logfile.read_text() if logfile.exists() else started}")
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run([*pg_ctl, "-m", "immediate", "-w", "stop"], capture_output=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """Yield the URL of a new, empty database on the server; drop it afterwards."""
    name = f"corral_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(admin_url)._replace(path="/" + name))
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
