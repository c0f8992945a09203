"""The manager's secrets are never inherited by the processes it starts (issue 19, item 8).

The options travel to the manager in its environment; the templates, the workers and the pre-start steps
must not find the admin token or the lock's password in theirs, whichever way the secret was given.
"""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psutil
import pytest

from harness import Corral, wait_for, write_app

PASSWORD = "Pa55-environ-secret"
TOKEN = "admin-token-environ-secret"
APP = """
async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
"""
# The step records its own environment, as the kernel holds it, where the test reads it.
STEP = f"{sys.executable} -c \"import shutil; shutil.copy('/proc/self/environ', 'step.environ')\""


def with_password(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{PASSWORD}@{parts.hostname}:{parts.port}"))


def children_holding_a_secret(manager: int) -> list[str]:
    """Every process under the manager whose environment or command line holds a secret's value."""
    found = []
    for process in psutil.Process(manager).children(recursive=True):
        for kind in ("environ", "cmdline"):
            try:
                data = Path(f"/proc/{process.pid}/{kind}").read_bytes()
            except (FileNotFoundError, ProcessLookupError):
                continue  # gone meanwhile
            found += [f"{process.pid} {kind} {s}" for s in (PASSWORD, TOKEN) if s.encode() in data]
    return found


@pytest.mark.parametrize("given_by", ["options", "environment", "env-file"])
def test_no_secret_value_in_a_child_environment(tmp_path: Path, postgres_url: str, given_by: str) -> None:
    write_app(tmp_path, APP)
    lock = with_password(postgres_url)
    args: list[str] = ["-w", "2", "--prestart", STEP, "--release", "r1", "--admin-bind", "127.0.0.1:0"]
    env: dict[str, str] = {}
    if given_by == "options":
        args += ["--prestart-lock", lock, "--admin-token", TOKEN]
    elif given_by == "environment":
        env = {"CORRAL_PRESTART_LOCK": lock, "CORRAL_ADMIN_TOKEN": TOKEN}
    else:
        (tmp_path / "corral.env").write_text(f"CORRAL_PRESTART_LOCK={lock}\nCORRAL_ADMIN_TOKEN={TOKEN}\n")
        (tmp_path / "corral.env").chmod(0o600)
        args += ["--env-file", "corral.env"]
    corral = Corral(tmp_path, "app:app", *args, env=env)
    try:
        corral.wait_ready(workers=2)
        assert "release r1 recorded as done" in corral.log, "the lock worked with the password"
        wait_for(lambda: len(psutil.Process(corral.process.pid).children(recursive=True)) >= 3,
                 what="a template and two workers")
        assert children_holding_a_secret(corral.process.pid) == []
        step = (tmp_path / "step.environ").read_bytes()
        assert b"PATH=" in step, "the step's environment was recorded"
        assert PASSWORD.encode() not in step and TOKEN.encode() not in step
        if given_by == "environment":  # the search reads the right place: the manager's own holds the value
            assert PASSWORD.encode() in Path(f"/proc/{corral.process.pid}/environ").read_bytes()
    finally:
        corral.stop()
