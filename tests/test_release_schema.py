"""The release record lives in its own schema: an alembic project's `alembic check` stays clean after `corral run`
recorded a release, and a record left in `public` by an older Corral is moved."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg

from harness import Corral

PROJECT = Path(__file__).with_name("alembic_app")


def project(tmp_path: Path) -> Path:
    shutil.copytree(PROJECT, tmp_path, dirs_exist_ok=True)
    return tmp_path


def alembic(directory: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "alembic", *args], cwd=directory, capture_output=True, text=True,
                          env={**os.environ, "DATABASE_URL": url}, timeout=60)


def deploy(corrals: list[Corral], directory: Path, url: str, release: str) -> Corral:
    corral = Corral(
        directory, "app:app", "-w", "1",
        "--prestart", f"{sys.executable} -m alembic upgrade head",
        "--prestart", f"{sys.executable} initial_data.py",
        "--prestart-lock", url, "--release", release,
        env={"DATABASE_URL": url},
    )
    corrals.append(corral)
    corral.wait_ready(1)
    return corral


def tables(url: str) -> dict[str, list[str]]:
    """Tables by schema, outside the system schemas."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2"
        ).fetchall()
    found: dict[str, list[str]] = {}
    for schema, table in rows:
        found.setdefault(schema, []).append(table)
    return found


def releases(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [row[0] for row in conn.execute("SELECT release FROM corral.corral_releases ORDER BY 1")]


def test_alembic_check_is_clean_after_a_recorded_release(
    corrals: list[Corral], tmp_path: Path, postgres_url: str
) -> None:
    directory = project(tmp_path)
    corral = deploy(corrals, directory, postgres_url, "r1")
    assert corral.get().text == "users: 1"  # migrations and the initial data ran before serving
    check = alembic(directory, postgres_url, "check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "No new upgrade operations detected" in check.stdout + check.stderr
    assert releases(postgres_url) == ["r1"]
    assert tables(postgres_url) == {
        "corral": ["corral_releases"],
        "public": ["alembic_version", "items", "users"],
    }
    # the next instance of the same release skips the steps
    corral.stop()
    again = deploy(corrals, directory, postgres_url, "r1")
    assert "release r1 already done" in again.log


def test_a_record_left_in_public_is_moved(corrals: list[Corral], tmp_path: Path, postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:  # as Corral 0.1.0 left it
        conn.execute("CREATE TABLE corral_releases (release text PRIMARY KEY, done_at timestamptz NOT NULL"
                     " DEFAULT now())")
        conn.execute("INSERT INTO corral_releases (release) VALUES ('r0')")
    directory = project(tmp_path)
    corral = deploy(corrals, directory, postgres_url, "r1")
    assert "moved public.corral_releases to corral.corral_releases" in corral.log
    assert releases(postgres_url) == ["r0", "r1"]
    assert "corral_releases" not in tables(postgres_url)["public"]
    check = alembic(directory, postgres_url, "check")
    assert check.returncode == 0, check.stdout + check.stderr
