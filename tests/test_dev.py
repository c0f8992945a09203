"""`corral dev`: edit the app's files and check what is served (real processes, conditions, no fixed sleeps)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import httpx
import pytest

from harness import Corral, run_cli, wait_for, write_app

VERSIONED = """
    import asyncio

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        if scope["path"] == "/slow":
            await asyncio.sleep(0.3)
        await send({{"type": "http.response.start", "status": 200, "headers": []}})
        await send({{"type": "http.response.body", "body": b"{body}"}})
"""


def save(directory: Path, body: str, name: str = "app.py") -> None:
    write_app(directory, VERSIONED.format(body=body), name)


def dev(corrals: list[Corral], directory: Path, *args: str) -> Corral:
    corral = Corral(directory, "app.py", *args, command_name="dev")
    corrals.append(corral)
    return corral


def serves(corral: Corral, body: str) -> bool:
    return corral.get().text == body


def test_a_saved_change_is_served(corrals: list[Corral], tmp_path: Path) -> None:
    save(tmp_path, "one")
    corral = dev(corrals, tmp_path)
    corral.wait_ready(1)  # corral dev's default: one worker
    assert corral.get().text == "one"
    save(tmp_path, "two")
    wait_for(lambda: serves(corral, "two"), what="the new body")
    assert corral.status()["generation"] == 2
    assert "changed: app.py; reloading" in corral.log


def test_a_syntax_error_is_printed_once_and_the_old_code_serves_until_fixed(
    corrals: list[Corral], tmp_path: Path
) -> None:
    save(tmp_path, "good")
    corral = dev(corrals, tmp_path)
    corral.wait_ready(1)
    pids = corral.ready_pids()
    (tmp_path / "app.py").write_text("async def app(scope, receive, send):\n    return (\n")
    wait_for(lambda: "reload refused" in corral.log, what="the refused reload")
    assert corral.get().text == "good"
    assert corral.ready_pids() == pids  # nothing else was restarted
    save(tmp_path, "fixed")
    wait_for(lambda: serves(corral, "fixed"), what="the fixed body")
    log = corral.log
    assert log.count("reload refused") == 1
    assert log.count("traceback of the failed start") == 1
    traceback = log.split("traceback of the failed start:", 1)[1]
    assert 'app.py", line 2' in traceback and "SyntaxError" in traceback  # the app's own error, in full
    assert corral.process.poll() is None


def test_an_import_error_at_start_waits_for_the_fix(corrals: list[Corral], tmp_path: Path) -> None:
    write_app(tmp_path, "import no_such_module_here\n")
    corral = dev(corrals, tmp_path)
    wait_for(lambda: "waiting for a change to the source" in corral.log, what="the failed start")
    assert "ModuleNotFoundError" in corral.log and corral.process.poll() is None
    save(tmp_path, "started")
    wait_for(lambda: serves(corral, "started"), what="the app once fixed")


def test_requests_in_flight_across_saves_do_not_fail(corrals: list[Corral], tmp_path: Path) -> None:
    save(tmp_path, "v0")
    corral = dev(corrals, tmp_path)
    corral.wait_ready(1)
    failures: list[str] = []
    bodies: set[str] = set()
    done = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=30) as http:
            while not done.is_set():
                try:
                    response = http.get(corral.url + "/slow")
                    bodies.add(response.text)
                    if response.status_code != 200:
                        failures.append(str(response.status_code))
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))

    threads = [threading.Thread(target=client) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for version in range(1, 4):
            save(tmp_path, f"v{version}")
            wait_for(lambda v=version: f"v{v}" in bodies, what=f"v{version} served")  # type: ignore[misc]
    finally:
        done.set()
        for thread in threads:
            thread.join(60)
    assert failures == []
    assert {"v0", "v1", "v2", "v3"} <= bodies


def test_venv_cache_and_git_changes_do_not_reload(corrals: list[Corral], tmp_path: Path) -> None:
    save(tmp_path, "one")
    for directory in (".venv", "env-any-name"):
        (tmp_path / directory / "lib").mkdir(parents=True)
        (tmp_path / directory / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / ".git").mkdir()
    corral = dev(corrals, tmp_path, "--state-dir", str(tmp_path / "state"))
    corral.wait_ready(1)
    (tmp_path / "state").mkdir(exist_ok=True)
    for path in (".venv/lib/mod.py", "env-any-name/lib/mod.py", "__pycache__/app.py", ".git/hook.py",
                 "state/x.py", "notes.txt", "app.pyc"):
        (tmp_path / path).write_text("x = 1\n")
    # then one change that counts: the only reload, and the only path named
    save(tmp_path, "two")
    wait_for(lambda: serves(corral, "two"), what="the new body")
    changed = [line for line in corral.log.splitlines() if "changed:" in line]
    assert changed == [changed[0]] and changed[0].endswith("changed: app.py; reloading"), changed
    assert corral.status()["generation"] == 2


def test_reload_dir_and_include_globs(corrals: list[Corral], tmp_path: Path) -> None:
    project, templates = tmp_path / "project", tmp_path / "templates"
    templates.mkdir()
    save(project, "one")
    corral = Corral(project, "app.py", "--reload-dir", str(templates), "--reload-include", "*.html",
                    "--reload-include", "*.py", command_name="dev")
    corrals.append(corral)
    corral.wait_ready(1)
    (templates / "page.html").write_text("<p>changed</p>")
    wait_for(lambda: corral.status()["generation"] == 2, what="a reload for the template")
    assert "changed: page.html; reloading" in corral.log


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_the_watcher_is_loaded_only_in_dev_mode(corrals: list[Corral], tmp_path: Path) -> None:
    save(tmp_path, "one")
    production = Corral(tmp_path, "app.py", "-w", "1")
    corrals.append(production)
    production.wait_ready(1)
    development = dev(corrals, tmp_path)
    development.wait_ready(1)
    assert "_rust_notify" not in _maps(production.process.pid)
    assert "_rust_notify" in _maps(development.process.pid)


@pytest.mark.parametrize("flag", ["--workers", "-w"])
def test_every_run_option_works_with_dev(corrals: list[Corral], tmp_path: Path, flag: str) -> None:
    save(tmp_path, "one")
    corral = dev(corrals, tmp_path, flag, "2", "--root-path", "/api")
    corral.wait_ready(2)
    assert corral.get().text == "one"


def test_dev_help_and_bad_option() -> None:
    result = run_cli("dev", "--no-such-option")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert os.environ.get("CORRAL_RELOAD") is None


def test_colour_on_a_terminal(tmp_path: Path) -> None:
    """The log is coloured when stderr is a terminal (a pseudo-terminal here), with no flag."""
    import pty
    import select
    import signal
    import subprocess

    from harness import corral_command, free_port

    save(tmp_path, "one")
    leader, follower = pty.openpty()
    port = free_port()
    process = subprocess.Popen(
        corral_command("dev", "app.py", "-b", f"127.0.0.1:{port}", "--control", str(tmp_path / "c.sock")),
        cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, start_new_session=True,
    )
    os.close(follower)
    seen = b""
    try:
        deadline = time.monotonic() + 60
        while b"ready" not in seen and time.monotonic() < deadline:
            if select.select([leader], [], [], 1)[0]:
                seen += os.read(leader, 65536)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        os.close(leader)
    assert b"ready" in seen, seen
    assert b"\x1b[32mINFO\x1b[0m" in seen


SLOW_IMPORT = """
    import time
    from pathlib import Path

    Path("importing-{body}").touch()
    time.sleep(1.5)

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({{"type": "http.response.start", "status": 200, "headers": []}})
        await send({{"type": "http.response.body", "body": b"{body}"}})
"""


def test_a_save_during_a_reload_is_served_after_it(corrals: list[Corral], tmp_path: Path) -> None:
    write_app(tmp_path, SLOW_IMPORT.format(body="one"))
    corral = dev(corrals, tmp_path)
    corral.wait_ready(1)
    write_app(tmp_path, SLOW_IMPORT.format(body="two"))
    wait_for(lambda: (tmp_path / "importing-two").exists(), what="the reload to two importing")
    write_app(tmp_path, SLOW_IMPORT.format(body="three"))  # while two is still importing
    wait_for(lambda: serves(corral, "three"), what="the last save served")
    assert "reloading once the reload in progress ends" in corral.log
