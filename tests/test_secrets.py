"""No secret in a process listing, a log line, `corral status`, `corral config` or an export (issue 10, obs. 7).

The lock URL's password and the admin token travel in the environment (the manager's options,
an env file, PGPASSWORD) and are shown as ***.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psutil
import pytest

from corral.redact import mask_url, redact_arguments
from harness import CORRAL, Corral, run_cli, write_app

PASSWORD = "Pa55-w0rd-in-the-url"
TOKEN = "admin-token-never-shown"
APP = """
async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
"""


def with_password(url: str) -> str:
    """The test server trusts every connection: the password is carried, not checked."""
    parts = urlsplit(url)
    netloc = f"{parts.username}:{PASSWORD}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def command_lines(pid: int) -> list[str]:
    """The command line of `pid` and of every process under it, as `ps` shows them to any user."""
    processes = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    return [Path(f"/proc/{process.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode() for process in processes]


def test_lock_password_and_token_stay_out_of_ps_logs_and_status(tmp_path: Path, postgres_url: str) -> None:
    write_app(tmp_path, APP)
    lock = with_password(postgres_url)
    corral = Corral(
        tmp_path, "app:app", "-w", "2", "--prestart", "true", "--release", "r1", "--prestart-lock", lock,
        "--admin-token", TOKEN, "--admin-bind", "127.0.0.1:0",
    )  # fmt: skip
    try:
        corral.wait_ready(workers=2)
        assert corral.get().text == "ok"
        assert "release r1 recorded as done" in corral.log, "the lock worked with the password"
        lines = command_lines(corral.process.pid)
        assert len(lines) >= 4, lines  # manager, template, two workers
        manager = lines[0]
        assert "corral.manager.entry run" in manager
        assert PASSWORD not in manager and TOKEN not in manager
        assert mask_url(lock) in manager and "--admin-token ***" in manager
        assert not [line for line in lines if PASSWORD in line or TOKEN in line]
        # The environments of the processes under the manager: tests/test_secrets_environ.py.
        status = run_cli("status", "--json", "--control", str(corral.control))
        assert status.returncode == 0 and PASSWORD not in status.stdout and TOKEN not in status.stdout
    finally:
        corral.stop()
    assert PASSWORD not in corral.log and TOKEN not in corral.log


def test_the_lock_from_an_env_file_is_not_on_the_command_line(tmp_path: Path, postgres_url: str) -> None:
    write_app(tmp_path, APP)
    (tmp_path / "corral.env").write_text(f"CORRAL_PRESTART_LOCK={with_password(postgres_url)}\n")
    (tmp_path / "corral.env").chmod(0o600)
    corral = Corral(tmp_path, "app:app", "-w", "1", "--prestart", "true", "--release", "r2", "--env-file", "corral.env")
    try:
        corral.wait_ready()
        assert "release r2 recorded as done" in corral.log
        manager = command_lines(corral.process.pid)[0]
        assert "postgresql://" not in manager and PASSWORD not in manager
    finally:
        corral.stop()
    assert PASSWORD not in corral.log


def test_corral_config_shows_stars(tmp_path: Path) -> None:
    lock = f"postgresql://app:{PASSWORD}@db.internal/app"
    result = run_cli("config", "--json", "--prestart", "true", "--prestart-lock", lock, "--admin-token", TOKEN,
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert PASSWORD not in result.stdout and TOKEN not in result.stdout
    rows = json.loads(result.stdout)
    assert rows["prestart_lock"]["value"] == "postgresql://app:***@db.internal/app"
    assert rows["admin_token"]["value"] == "***"
    table = run_cli("config", "--prestart", "true", "--prestart-lock", lock, "--admin-token", TOKEN, cwd=tmp_path)
    assert table.returncode == 0 and PASSWORD not in table.stdout and TOKEN not in table.stdout


def test_redact_arguments() -> None:
    args = ["app:app", "--admin-token", "t", "--admin-token=t2", "--prestart-lock", "postgres://u:p@h/d", "--bind", "x"]
    assert redact_arguments(args) == [
        "app:app", "--admin-token", "***", "--admin-token=***", "--prestart-lock", "postgres://u:***@h/d",
        "--bind", "x",
    ]  # fmt: skip
    assert mask_url("postgresql://u@h/d") == "postgresql://u@h/d", "no password, nothing to mask"


@pytest.mark.parametrize(
    ("command", "extra"),
    [
        ("systemd", ["--user", "corral-test-service"]),
        ("docker", []),
        ("compose", []),
        ("kubernetes", ["--memory", "256MiB", "--release", "r1"]),
    ],
)
def test_no_secret_in_any_export(tmp_path: Path, command: str, extra: list[str]) -> None:
    import subprocess

    write_app(tmp_path, APP)
    (tmp_path / "requirements.txt").write_text("starlette\n")
    (tmp_path / ".env").write_text(
        f"SECRET_KEY=sk-{PASSWORD}\nDATABASE_URL=postgresql://app:{PASSWORD}@db.internal/app\nMODE=prod\n"
    )
    lock = f"postgresql://app:{PASSWORD}@db.internal/app"
    args = ["app:app", "--prestart", "true", "--prestart-lock", lock, "--admin-token", TOKEN, "--env-file", ".env"]
    out = tmp_path / "out"
    result = subprocess.run(
        [CORRAL, "export", command, *args, *extra, "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert PASSWORD not in result.stdout + result.stderr and TOKEN not in result.stdout + result.stderr
    for path in out.iterdir():
        if path.suffix != ".whl":
            text = path.read_text()
            assert PASSWORD not in text and TOKEN not in text, path.name
