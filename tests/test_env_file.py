"""`corral run --env-file`: the app's variables reach its processes, CORRAL_* configure Corral (issue 10, obs. 1)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.envfile import app_environment, read_env_file
from corral.errors import ConfigError
from harness import Corral, run_cli, wait_for, write_app

APP = """
import os

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    names = ("SECRET_KEY", "DATABASE_URL", "GREETING", "CORRAL_WORKERS", "FROM_SHELL")
    body = json.dumps({name: os.environ.get(name) for name in names}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})

import json
"""


@pytest.fixture
def corral_env(tmp_path: Path) -> Iterator[Path]:
    write_app(tmp_path, APP)
    (tmp_path / ".env").write_text(
        "# the app's settings\n"
        "SECRET_KEY='s3cret value'\n"
        "export DATABASE_URL=postgresql://app:pw@db.internal/app\n"
        "GREETING=hello ${SECRET_KEY}\n"
        "FROM_SHELL=from-the-file\n"
        "CORRAL_WORKERS=3\n"
    )
    (tmp_path / "later.env").write_text("GREETING=from the later file\n")
    yield tmp_path


def test_variables_reach_the_workers_and_the_prestart_steps(corral_env: Path) -> None:
    steps = "echo $SECRET_KEY/$GREETING > seen-by-step.txt"
    corral = Corral(
        corral_env, "app:app", "--env-file", ".env", "--env-file", "later.env", "--prestart", steps,
        env={"FROM_SHELL": "from-the-shell"},
    )  # fmt: skip
    try:
        corral.wait_ready(workers=3)  # CORRAL_WORKERS=3 in the file configures Corral itself
        seen = [json.loads(corral.get().content) for _ in range(6)]
        for values in seen:
            assert values["SECRET_KEY"] == "s3cret value"
            assert values["DATABASE_URL"] == "postgresql://app:pw@db.internal/app"
            assert values["GREETING"] == "from the later file", "a later file wins"
            assert values["FROM_SHELL"] == "from-the-shell", "the environment wins over the files"
            assert values["CORRAL_WORKERS"] is None, "Corral's own settings are not the app's"
        assert (corral_env / "seen-by-step.txt").read_text() == "s3cret value/from the later file\n"
    finally:
        corral.stop()


def test_a_reload_reads_the_file_again(corral_env: Path) -> None:
    corral = Corral(corral_env, "app:app", "--env-file", "later.env", "-w", "1")
    try:
        corral.wait_ready()
        assert json.loads(corral.get().content)["GREETING"] == "from the later file"
        (corral_env / "later.env").write_text("GREETING=changed\n")
        result = run_cli("reload", "--control", str(corral.control), timeout=120)
        assert result.returncode == 0, result.stderr
        wait_for(lambda: json.loads(corral.get().content)["GREETING"] == "changed", what="the new value")
        # A file broken later keeps the values read before, and says why.
        (corral_env / "later.env").write_text("GREETING='never closed\n")
        result = run_cli("reload", "--control", str(corral.control), timeout=120)
        assert result.returncode == 0, result.stderr
        assert json.loads(corral.get().content)["GREETING"] == "changed"
        assert "keeping the values read before" in corral.log
    finally:
        corral.stop()


def test_corral_config_names_the_file_as_the_source(corral_env: Path) -> None:
    result = run_cli("config", "--json", "app:app", "--env-file", ".env", cwd=corral_env)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert rows["workers"] == {"value": 3, "source": "env CORRAL_WORKERS (--env-file)"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "--env-file missing.env: cannot read: No such file or directory"),
        ("GOOD=1\nBAD LINE WITHOUT EQUALS\n", "--env-file missing.env: line 2: not KEY=VALUE"),
        ("KEY='never closed\n", "--env-file missing.env: line 1: not KEY=VALUE"),
        (b"KEY=\xff\xfe\n", "--env-file missing.env: not UTF-8 text"),
    ],
)
def test_bad_file_is_one_line(tmp_path: Path, content: str | bytes | None, message: str) -> None:
    write_app(tmp_path, APP)
    if isinstance(content, str):
        (tmp_path / "missing.env").write_text(content)
    elif isinstance(content, bytes):
        (tmp_path / "missing.env").write_bytes(content)
    for command in (["run"], ["config"], ["prestart", "--prestart", "true"]):
        result = run_cli(*command, "app:app", "--env-file", "missing.env", cwd=tmp_path)
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr.startswith(f"corral: {message}"), result.stderr
        assert result.stderr.count("\n") == 1, result.stderr


def test_unreadable_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "secret.env"
    path.write_text("A=1\n")
    path.chmod(0)
    if os.access(path, os.R_OK):
        # root reads any file: a directory cannot be read as a file by anyone
        path = tmp_path / "a-directory.env"
        path.mkdir()
    with pytest.raises(ConfigError, match=r"cannot read"):
        read_env_file(path)


def test_app_environment_keeps_corral_variables_out(tmp_path: Path) -> None:
    (tmp_path / "a.env").write_text("CORRAL_BIND=0.0.0.0:1\nAPP_MODE=prod\nPATH=/nowhere\n")
    env = app_environment([str(tmp_path / "a.env")], {"PATH": "/usr/bin"})
    assert env == {"PATH": "/usr/bin", "APP_MODE": "prod"}
