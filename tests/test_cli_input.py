"""Bad input gets one clear line and a non-zero exit; good input is found where the docs say."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from harness import PLAIN_APP, Corral, corral_command, free_port, run_cli, wait_for, write_app

APP = PLAIN_APP


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("corral: ")
    return lines[0]



def test_unknown_option(tmp_path: Path) -> None:
    line = one_line_error(run_cli("run", "app:app", "--no-such-option", cwd=tmp_path))
    assert "--no-such-option" in line
    assert run_cli("run", "app:app", "--no-such-option", cwd=tmp_path).returncode == 2


@pytest.mark.parametrize("app", ["app:app:app", "not a module:app", "app:", "app", ":app", "app:1x"])
def test_bad_app_string(tmp_path: Path, app: str) -> None:
    line = one_line_error(run_cli("run", app, cwd=tmp_path, timeout=20))
    assert "APP" in line


def test_missing_file(tmp_path: Path) -> None:
    line = one_line_error(run_cli("run", "nowhere/main.py", cwd=tmp_path, timeout=20))
    assert "no such file" in line


def test_nothing_to_discover(tmp_path: Path) -> None:
    line = one_line_error(run_cli("run", cwd=tmp_path, timeout=20))
    assert "main.py" in line


def test_port_in_use(tmp_path: Path) -> None:
    write_app(tmp_path, APP % "x")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("run", "app.py", "-b", f"127.0.0.1:{port}", "--control", str(tmp_path / "c.sock"),
                         cwd=tmp_path, timeout=20)
    line = one_line_error(result)
    assert result.returncode == 5
    assert "address already in use" in line and str(port) in line


@pytest.mark.parametrize("bind", ["localhost", "127.0.0.1:99999", "[::1:80", "fd://x", "unix:"])
def test_bad_bind(tmp_path: Path, bind: str) -> None:
    one_line_error(run_cli("run", "app.py", "-b", bind, cwd=tmp_path, timeout=20))


def test_malformed_config_file(tmp_path: Path) -> None:
    (tmp_path / "corral.toml").write_text("workers = \n")
    line = one_line_error(run_cli("config", cwd=tmp_path))
    assert "corral.toml" in line and "malformed" in line


def test_unknown_config_key(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.corral]\nworkerz = 2\n")
    line = one_line_error(run_cli("run", cwd=tmp_path, timeout=20))
    assert "workerz" in line and "pyproject.toml" in line


def test_bad_value_names_its_source(tmp_path: Path) -> None:
    env = {**os.environ, "CORRAL_TIMEOUT": "soon"}
    line = one_line_error(run_cli("config", cwd=tmp_path, env=env))
    assert "--timeout" in line and "CORRAL_TIMEOUT" in line


def test_layers_and_sources(tmp_path: Path) -> None:
    (tmp_path / "corral.toml").write_text('workers = 3\ntimeout = 12\nmax-requests = 100\nbind = ["127.0.0.1:1"]\n')
    env = {**os.environ, "CORRAL_TIMEOUT": "20", "CORRAL_BIND": "127.0.0.1:2,unix:/tmp/x.sock"}
    result = run_cli("config", "--json", "--max-requests", "7", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert config["workers"] == {"value": 3, "source": str(tmp_path / "corral.toml")}
    assert config["timeout"] == {"value": 20.0, "source": "env CORRAL_TIMEOUT"}
    assert config["bind"]["value"] == ["127.0.0.1:2", "unix:/tmp/x.sock"]
    assert config["max_requests"] == {"value": 7, "source": "command line"}
    assert config["graceful_timeout"]["source"] == "default"
    table = run_cli("config", "--max-requests", "7", cwd=tmp_path, env=env)
    assert "command line" in table.stdout and "CORRAL_TIMEOUT" in table.stdout


def test_web_concurrency_is_honoured(tmp_path: Path) -> None:
    env = {**os.environ, "WEB_CONCURRENCY": "5"}
    config = json.loads(run_cli("config", "--json", cwd=tmp_path, env=env).stdout)
    assert config["workers"] == {"value": 5, "source": "env WEB_CONCURRENCY"}
    env["CORRAL_WORKERS"] = "2"
    config = json.loads(run_cli("config", "--json", cwd=tmp_path, env=env).stdout)
    assert config["workers"]["value"] == 2


def test_config_file_drives_run(corrals: list[Corral], tmp_path: Path) -> None:
    write_app(tmp_path, APP % "from config")
    port = free_port()
    control = tmp_path / "from-config.sock"
    (tmp_path / "pyproject.toml").write_text(
        f'[tool.corral]\napp = "app.py"\nworkers = 2\nbind = ["127.0.0.1:{port}"]\ncontrol = "{control}"\n'
    )
    process = subprocess.Popen(corral_command("run"), cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/").text == "from config", what="app from config")
        status = run_cli("status", "--json", cwd=tmp_path)  # the control socket comes from the file too
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["target_workers"] == 2
    finally:
        process.terminate()
        assert process.wait(60) == 0


@pytest.mark.parametrize(
    ("layout", "argument"),
    [
        ({"main.py": APP % "discovered"}, None),
        ({"api.py": APP % "discovered"}, None),
        ({"app/__init__.py": "", "app/main.py": APP % "discovered"}, None),
        ({"pkg/__init__.py": "", "pkg/web.py": APP.replace("async def app", "async def api") % "discovered"},
         "pkg/web.py:api"),
        ({"src/service.py": APP % "discovered"}, "service:app --app-dir src"),
        ({"factory.py": "def make():\n    " + (APP % "discovered").strip().replace("\n", "\n    ")
          + "\n    return app\n"}, "factory:make --factory"),
    ],
    ids=["main.py", "api.py", "app/main.py", "package-file-attr", "app-dir", "factory"],
)
def test_app_forms(corrals: list[Corral], tmp_path: Path, layout: dict[str, str], argument: str | None) -> None:
    for name, source in layout.items():
        write_app(tmp_path, source, name)
    words = argument.split() if argument else []
    port = free_port()
    control = tmp_path / "c.sock"
    process = subprocess.Popen(
        corral_command("run", *words, "-w", "1", "-b", f"127.0.0.1:{port}", "--control", str(control)),
        cwd=tmp_path, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/").text == "discovered", timeout=60, what="app")
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stderr


def test_unix_ipv6_and_several_binds(corrals: list[Corral], tmp_path: Path) -> None:
    write_app(tmp_path, APP % "everywhere")
    sock_path = tmp_path / "app.sock"
    port6 = free_port()
    corral = Corral(tmp_path, "app.py", "-w", "1", "-b", f"unix:{sock_path}", "-b", f"[::1]:{port6}")
    corrals.append(corral)
    corral.wait_ready(1)
    assert corral.get().text == "everywhere"
    assert httpx.get(f"http://[::1]:{port6}/").text == "everywhere"
    transport = httpx.HTTPTransport(uds=str(sock_path))
    assert httpx.Client(transport=transport).get("http://corral/").text == "everywhere"
    corral.signal(15)
    assert corral.wait_exit() == 0
    assert not sock_path.exists()


def test_systemd_socket_activation(corrals: list[Corral], tmp_path: Path) -> None:
    """LISTEN_FDS/LISTEN_PID: the sockets come from the caller; corral binds nothing itself."""
    write_app(tmp_path, APP % "activated")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    control = tmp_path / "sd.sock"
    script = (
        "import os, sys; os.dup2(int(sys.argv[1]), 3); os.environ['LISTEN_FDS'] = '1'; "
        "os.environ['LISTEN_PID'] = str(os.getpid()); "
        "os.execv(sys.executable, [sys.executable, '-m', 'corral', *sys.argv[2:]])"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(listener.fileno()), "run", "app.py", "-w", "1", "--control", str(control)],
        cwd=tmp_path, pass_fds=[listener.fileno()], stderr=subprocess.PIPE, text=True,
    )
    listener.close()
    try:
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/").text == "activated", what="activated socket")
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr


def test_bad_forwarded_allow_ips(tmp_path: Path) -> None:
    line = one_line_error(run_cli("run", "app.py", "--forwarded-allow-ips", "bogus", cwd=tmp_path))
    assert "bogus" in line and "--forwarded-allow-ips" in line
