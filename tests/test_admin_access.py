"""Access to --admin-bind: loopback without a host, a token off loopback (probes exempt), actions as JSON POSTs
from the same origin, and no secret in anything Corral prints or serves."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from corral.binds import Bind, is_loopback, parse_admin_bind
from harness import PLAIN_APP, Corral, free_port, run_cli, write_app

APP = PLAIN_APP % "served"
TESTS = Path(__file__).resolve().parent


def test_admin_bind_without_a_host_is_loopback() -> None:
    assert parse_admin_bind(":9000") == Bind("tcp", host="127.0.0.1", port=9000)
    assert parse_admin_bind("9000") == Bind("tcp", host="127.0.0.1", port=9000)
    assert parse_admin_bind("0.0.0.0:9000").host == "0.0.0.0"
    assert parse_admin_bind("[::1]:9000").host == "::1"
    for text in (":9000", "127.0.0.5:1", "[::1]:1", "localhost:1", "unix:/run/a.sock"):
        assert is_loopback(parse_admin_bind(text)), text
    for text in ("0.0.0.0:1", "[::]:1", "10.0.0.1:1", "example.com:1"):
        assert not is_loopback(parse_admin_bind(text)), text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--admin-bind", ":{port}", "--admin-token-file", "{tmp}/missing"], "cannot read"),
        (["--admin-bind", ":{port}", "--admin-token-file", "{tmp}/empty"], "is empty"),
        (["--admin-bind", "fd://3"], "HOST:PORT"),
    ],
)
def test_refused_admin_settings_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    write_app(tmp_path, APP)
    (tmp_path / "empty").write_text("\n")
    values = [arg.format(port=free_port(), tmp=tmp_path) for arg in args]
    result = run_cli("run", "app.py", "-b", f"127.0.0.1:{free_port()}", "--control", str(tmp_path / "c.sock"),
                     *values, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr


def test_off_by_default(corrals: list[Corral], tmp_path: Path) -> None:
    write_app(tmp_path, APP)
    corral = Corral(tmp_path, "app.py", "-w", "1")
    corrals.append(corral)
    corral.wait_ready(1)
    listening = {c.laddr.port for c in psutil.Process(corral.process.pid).net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN}
    assert listening == {corral.port}  # the app's listener only


def test_loopback_by_default_and_guards_without_a_token(corrals: list[Corral], tmp_path: Path) -> None:
    write_app(tmp_path, APP)
    admin_port = free_port()
    corral = Corral(tmp_path, "app.py", "-w", "1", "--admin-bind", f":{admin_port}")
    corrals.append(corral)
    corral.wait_ready(1)
    listening = [c.laddr for c in psutil.Process(corral.process.pid).net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == admin_port]
    assert [address.ip for address in listening] == ["127.0.0.1"]
    base = f"http://127.0.0.1:{admin_port}"
    assert httpx.get(base + "/api/status").status_code == 200  # loopback, no token: open to this machine
    # a DNS-rebinding page reaches 127.0.0.1 under its own name: refused
    assert httpx.get(base + "/api/status", headers={"host": "attacker.example"}).status_code == 403
    # a form posted by another site: not JSON, or from another origin
    assert httpx.post(base + "/api/scale", data={"to": "+1"}).status_code == 415
    cross = httpx.post(base + "/api/scale", json={"to": "+1"}, headers={"origin": "https://attacker.example"})
    assert cross.status_code == 403
    assert httpx.get(base + "/api/scale").status_code == 405  # actions are POSTs only
    bad = httpx.post(base + "/api/scale", content=b"{", headers={"content-type": "application/json"})
    assert bad.status_code == 400
    refused = httpx.post(base + "/api/scale", json={"to": "0"})
    assert refused.status_code == 409 and refused.json()["ok"] is False
    same_origin = httpx.post(base + "/api/scale", json={"to": "2"}, headers={"origin": base})
    assert same_origin.status_code == 200 and same_origin.json()["target"] == 2
    corral.wait_ready(2)
    reloaded = httpx.post(base + "/api/reload", json={}, timeout=60)  # as `corral reload`: answers when done
    assert reloaded.status_code == 200 and reloaded.json()["generation"] == 2
    huge = httpx.post(base + "/api/scale", content=b"x" * 200_000, headers={"content-type": "application/json"})
    assert huge.status_code == 413
    assert httpx.get(base + "/livez").status_code == 200  # the listener is still fine


def test_a_token_on_loopback_is_required_and_never_shown(corrals: list[Corral], tmp_path: Path) -> None:
    token = "tok-7b1e93d2a5"
    write_app(tmp_path, APP)
    admin_port = free_port()
    corral = Corral(tmp_path, "app.py", "-w", "1", "--admin-bind", str(admin_port), "--admin-token", token)
    corrals.append(corral)
    (pid,) = corral.wait_ready(1)
    base = f"http://127.0.0.1:{admin_port}"
    assert httpx.get(base + "/api/status").status_code == 401
    assert httpx.get(base + "/livez").status_code == 200
    answer = httpx.get(base + "/api/status", headers={"authorization": f"Bearer {token}"})
    assert answer.status_code == 200 and token not in answer.text
    for asset in ("/dashboard", "/dashboard/app.js", "/dashboard/style.css"):
        assert token not in httpx.get(base + asset).text
    assert token not in run_cli("status", "--json", "--control", str(corral.control)).stdout
    # the app's processes never see it (it reached the manager on its command line, the user's choice)
    for process in [psutil.Process(pid), *psutil.Process(corral.process.pid).children()]:
        assert token not in "\0".join(process.environ().values()) and token not in " ".join(process.cmdline())
    shown = run_cli("config", "--admin-token", token, "--admin-bind", "9000")
    assert shown.returncode == 0 and token not in shown.stdout and "***" in shown.stdout
    as_json = json.loads(run_cli("config", "--json", "--admin-token", token).stdout)
    assert as_json["admin_token"]["value"] == "***"


def test_env_token_is_not_inherited_by_the_app(corrals: list[Corral], tmp_path: Path) -> None:
    token = "env-tok-0c4d1f"
    write_app(tmp_path, APP)
    admin_port = free_port()
    corral = Corral(tmp_path, "app.py", "-w", "1", "--admin-bind", f"127.0.0.1:{admin_port}",
                    env={"CORRAL_ADMIN_TOKEN": token})
    corrals.append(corral)
    corral.wait_ready(1)
    # the value, under any name, in what the kernel keeps of every process under the manager
    for child in psutil.Process(corral.process.pid).children(recursive=True):
        assert token.encode() not in Path(f"/proc/{child.pid}/environ").read_bytes(), child.pid
    base = f"http://127.0.0.1:{admin_port}"
    assert httpx.get(base + "/api/events").status_code == 401
    assert httpx.get(base + "/api/events", headers={"authorization": f"Bearer {token}"}).status_code == 200


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"),
                    reason="needs root, unshare and ip to make a network namespace")
def test_off_loopback_requires_the_token(tmp_path: Path) -> None:
    """In a network namespace of its own: an address that is not loopback, reachable only there."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(["unshare", "--net", sys.executable, str(TESTS / "netns_admin.py"), str(tmp_path)],
                            capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["ok"] is True


def test_the_token_file_gives_its_first_line(tmp_path: Path) -> None:
    from corral.errors import ConfigError
    from corral.manager.admin_access import load_token
    from harness import options_from

    path = tmp_path / "token"
    path.write_text("  first-line-token \nsecond line\n")
    admin = {"admin_bind": "127.0.0.1:9000"}  # a token file needs the listener that asks for it
    assert load_token(options_from({**admin, "admin_token_file": str(path)})) == "first-line-token"
    assert load_token(options_from({"admin_token": "given"})) == "given"
    assert load_token(options_from({})) is None
    path.write_text("\n\n")
    with pytest.raises(ConfigError, match="is empty"):
        load_token(options_from({**admin, "admin_token_file": str(path)}))


def test_top_without_an_instance_is_one_line(tmp_path: Path) -> None:
    result = run_cli("top", "--control", str(tmp_path / "none.sock"))
    assert result.returncode == 7 and result.stderr.count("\n") == 1 and "no corral instance" in result.stderr
