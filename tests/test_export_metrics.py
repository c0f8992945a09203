"""The admin token of the exports and the banner that says who may read the admin pages (issue 19, item 4)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from corral.cli import parse_run_arguments
from corral.export.common import CONTAINER_TOKEN
from corral.export.metrics import TOKEN_FILE, UNWRITTEN_TOKEN
from corral.manager.admin_access import admin_access_text
from harness import CORRAL, Corral, free_port, wait_for, write_app

APP = """
async def app(scope, receive, send):
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
"""


def banner_line(log: str, key: str) -> str:
    match = re.search(rf"^  {key}:\s+(.+)$", log, re.MULTILINE)
    assert match, f"no {key!r} line in the banner:\n{log}"
    return match.group(1).strip()


def test_access_text_says_who_may_read_what() -> None:
    required = "/metrics, /dashboard: token required (Authorization: Bearer)"
    assert admin_access_text(token=True, exposed=True).endswith(required)
    assert "not served" in admin_access_text(token=False, exposed=True)
    assert "this machine only" in admin_access_text(token=False, exposed=False)
    for token in (True, False):
        for exposed in (True, False):
            assert admin_access_text(token, exposed).startswith("/livez, /readyz: open; ")


@pytest.mark.parametrize("with_token", [True, False])
def test_banner_gives_the_admin_urls_with_who_may_read_them(tmp_path: Path, with_token: bool) -> None:
    write_app(tmp_path, APP)
    admin_port = free_port()
    args = ["-w", "1", "--admin-bind", f"127.0.0.1:{admin_port}"]
    token = "t0ken-for-the-banner-test-0123456789abcdef"
    if with_token:
        (tmp_path / "token").write_text(token + "\n")
        args += ["--admin-token-file", str(tmp_path / "token")]
    corral = Corral(tmp_path, "app:app", *args)
    try:
        corral.wait_ready(1)
        wait_for(lambda: "  access:" in corral.log, 60, "the banner")
        access = banner_line(corral.log, "access")
        urls = banner_line(corral.log, "admin").split()
        assert f"http://127.0.0.1:{admin_port}/metrics" in urls
        metrics = f"http://127.0.0.1:{admin_port}/metrics"
        if with_token:
            assert access.endswith("/metrics, /dashboard: token required (Authorization: Bearer)"), access
            assert httpx.get(metrics, timeout=10).status_code == 401
            answer = httpx.get(metrics, headers={"Authorization": f"Bearer {token}"}, timeout=10)
            assert answer.status_code == 200 and "corral_" in answer.text
        else:
            assert access.endswith("/metrics, /dashboard: this machine only (loopback, no token)"), access
            assert httpx.get(metrics, timeout=10).status_code == 200
    finally:
        corral.stop()


def test_the_token_file_is_kept_and_never_printed(tmp_path: Path) -> None:
    """A second export into the same --out keeps the token (a configured Prometheus goes on scraping);
    printed without --out the token is not written to stdout."""
    write_app(tmp_path, APP)
    (tmp_path / "requirements.txt").write_text("starlette\n")

    def export(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([CORRAL, "export", *args], cwd=tmp_path, capture_output=True, text=True,
                              timeout=120, check=False)  # fmt: skip

    first = export("docker", "app:app", "--out", "deploy")
    assert first.returncode == 0, first.stderr
    token_file = tmp_path / "deploy" / TOKEN_FILE
    token = token_file.read_text().strip()
    assert len(token) >= 40 and token_file.stat().st_mode & 0o777 == 0o600
    if os.geteuid() == 0:
        assert token_file.stat().st_uid == 10001, "the container's user reads it"
    assert export("compose", "app:app", "--out", "deploy").returncode == 0
    assert export("docker", "app:app", "--out", "deploy").returncode == 0
    assert token_file.read_text().strip() == token
    ignore = (tmp_path / "deploy/Dockerfile.dockerignore").read_text().splitlines()
    assert "**/admin-token" in ignore, "the token never goes into the image"
    printed = export("docker", "app:app")
    assert printed.returncode == 0 and token not in printed.stdout
    assert UNWRITTEN_TOKEN in printed.stderr.splitlines()
    assert f"{TOKEN_FILE} is written only with --out DIR" not in printed.stderr


def command_of(dockerfile: str) -> list[str]:
    line = next(line for line in dockerfile.splitlines() if line.startswith("CMD ["))
    command: list[str] = json.loads(line.removeprefix("CMD "))
    return command


def test_printed_exports_run_as_written(tmp_path: Path) -> None:
    """Printed without --out no token file can be written: the Dockerfile and the Compose file must not point
    at one (the container would stop at start), and stderr says that --out DIR also writes the metrics token.
    The printed command starts as it is (only its addresses moved to loopback and its state directory here)."""
    write_app(tmp_path, APP)
    (tmp_path / "requirements.txt").write_text("starlette\n")

    def export(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([CORRAL, "export", *args, "app:app", "-w", "1"], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120, check=False)  # fmt: skip

    docker = export("docker")
    assert docker.returncode == 0, docker.stderr
    assert docker.stderr.splitlines().count(UNWRITTEN_TOKEN) == 1
    assert CONTAINER_TOKEN not in docker.stdout, "neither CMD nor the printed docker run names a token file"
    command = command_of(docker.stdout)
    assert parse_run_arguments(command[1:]).settings.admin_token_file is None

    compose = export("compose")
    assert compose.returncode == 0, compose.stderr
    assert compose.stderr.splitlines().count(UNWRITTEN_TOKEN) == 1
    document = yaml.safe_load(compose.stdout)
    assert "secrets" not in document and "secrets" not in document["services"]["app"]
    assert CONTAINER_TOKEN not in compose.stdout

    admin_port = free_port()
    moved = {"--bind": None, "--admin-bind": f"127.0.0.1:{admin_port}", "--state-dir": str(tmp_path / "state")}
    args: list[str] = []
    words = iter(command[2:])
    for word in words:
        if word in moved:
            value, _ = moved[word], next(words)
            args += [word, value] if value is not None else []
        else:
            args.append(word)
    assert "--admin-bind" in args and "--state-dir" in args
    corral = Corral(tmp_path, command[1], *args)
    try:
        corral.wait_ready(1)
        assert httpx.get(f"http://127.0.0.1:{admin_port}/livez", timeout=10).status_code == 200
    finally:
        corral.stop()
