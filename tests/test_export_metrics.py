"""The admin token of the exports and the banner that says who may read the admin pages (issue 19, item 4)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import httpx
import pytest

from corral.export.metrics import TOKEN_FILE
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
    assert f"{TOKEN_FILE} is written only with --out DIR" in printed.stderr
