"""Started as root, `--user/--group` drops privileges before any app code runs; the state belongs to that user."""

from __future__ import annotations

import os
import pwd
import shutil
import ssl
import tempfile
from pathlib import Path

import httpx
import psutil
import pytest

from harness import Corral, write_app

APP = """
    import os

    IMPORTED_AS = os.getuid()

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = f"{IMPORTED_AS} {os.getuid()}".encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root (CI runs as root)")
def test_user_drops_privileges_before_the_app_is_imported(corrals: list[Corral]) -> None:
    nobody = pwd.getpwnam("nobody")
    tmp_path = Path(tempfile.mkdtemp(prefix="corral-user-"))  # pytest's own tmp dirs are 0700: nobody cannot enter
    tmp_path.chmod(0o755)
    write_app(tmp_path, APP)
    state = tmp_path / "state"
    corral = Corral(tmp_path, "app.py", "-w", "1", "--https", "localhost", "--state-dir", str(state),
                    "--user", "nobody")
    corrals.append(corral)
    (pid,) = corral.wait_ready(1)
    trust = ssl.create_default_context(cafile=str(state / "ca" / "root.pem"))
    response = httpx.get(f"https://localhost:{corral.port}/", verify=trust)
    assert response.text == f"{nobody.pw_uid} {nobody.pw_uid}"  # imported and served as nobody
    template = corral.status()["templates"][0]["pid"]
    for process in (psutil.Process(pid), psutil.Process(template)):
        assert process.uids().real == process.uids().effective == nobody.pw_uid
    assert psutil.Process(corral.process.pid).uids().effective == 0  # the manager keeps its sockets
    for path in [state, *state.rglob("*")]:
        assert path.stat().st_uid == nobody.pw_uid, path
    corral.stop()
    shutil.rmtree(tmp_path)


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root (CI runs as root)")
@pytest.mark.parametrize("closed", ["file", "directory"])
def test_app_closed_to_the_service_user_is_named(corrals: list[Corral], closed: str) -> None:
    tmp_path = Path(tempfile.mkdtemp(prefix="corral-user-"))  # mode 0700, root's: nobody cannot enter
    app = write_app(tmp_path, APP)
    if closed == "file":
        tmp_path.chmod(0o755)
        app.chmod(0o600)
    corral = Corral(tmp_path, "app.py", "-w", "1", "--user", "nobody")
    corrals.append(corral)
    assert corral.wait_exit() == 3
    unreadable = app if closed == "file" else tmp_path
    assert f"{unreadable} is not readable by user 'nobody'" in corral.log, corral.log
    cause, stopped = corral.log.strip().splitlines()  # the cause in one line, then the instance's last line
    assert "is not readable" in cause and "stopped after" in stopped and "exit code 3" in stopped, corral.log
    shutil.rmtree(tmp_path)
