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
    assert line.startswith(f"corral: bad APP {app!r}: "), line  # its form, not a missing module


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


@pytest.mark.parametrize(
    ("bind", "why"),
    [
        ("localhost", "expected HOST:PORT, [::1]:PORT, unix:PATH or fd://N"),
        ("127.0.0.1:99999", "port must be a number from 0 to 65535"),
        ("[::1:80", "expected [IPv6]:PORT"),
        ("fd://x", "fd:// needs a file descriptor number"),
        ("unix:", "unix: needs a path"),
    ],
)
def test_bad_bind(tmp_path: Path, bind: str, why: str) -> None:
    write_app(tmp_path, APP % "x")  # the app exists: only the address can be refused
    result = run_cli("run", "app.py", "-b", bind, cwd=tmp_path, timeout=20)
    assert one_line_error(result) == f"corral: invalid --bind (command line): {bind!r}: {why}"
    assert result.returncode == 2


HOST_NAME = "is not a host name (letters, digits and '-' in dot-separated labels, or an IP address)"


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--https", "-"], f"invalid --https (command line): '-' {HOST_NAME}"),
        (["--https", "a..b"], f"invalid --https (command line): 'a..b' {HOST_NAME}"),
        (["--acme-email", "notanemail"],
         "invalid --acme-email (command line): expected an e-mail address such as ops@example.com, got 'notanemail'"),
        (["--acme-directory", "ftp://x"],
         "invalid --acme-directory (command line): expected an https:// URL of an ACME directory, got 'ftp://x'"),
        (["--admin-token-file", "token"],
         "invalid options: --admin-token-file needs --admin-bind (the listener that asks for the token)"),
        (["--autoscale-cooldown", "nan"],
         "invalid --autoscale-cooldown (command line): must be from 1 to 3,600 seconds, got nan"),
        (["--autoscale-cooldown", "inf"],
         "invalid --autoscale-cooldown (command line): must be from 1 to 3,600 seconds, got inf"),
        (["--config", "/dev/null"], "config file /dev/null is a character device, not a file"),
    ],
    ids=["https-dash", "https-empty-label", "acme-email", "acme-directory", "token-file-alone", "cooldown-nan",
         "cooldown-inf", "config-dev-null"],
)
def test_inputs_refused_before_anything_starts(tmp_path: Path, args: list[str], line: str) -> None:
    """Issue 19, item 7: each refused in one line, exit 2, before a process is forked or a CA contacted."""
    write_app(tmp_path, APP % "x")
    (tmp_path / "token").write_text("s3cret\n")
    result = run_cli("run", "app.py", "-b", f"127.0.0.1:{free_port()}", *args, cwd=tmp_path, timeout=30)
    assert one_line_error(result) == f"corral: {line}"
    assert result.returncode == 2


def test_missing_admin_token_file(tmp_path: Path) -> None:
    write_app(tmp_path, APP % "x")
    result = run_cli("run", "app.py", "-b", f"127.0.0.1:{free_port()}", "--admin-bind", f"127.0.0.1:{free_port()}",
                     "--admin-token-file", str(tmp_path / "nope"), "--control", str(tmp_path / "c.sock"),
                     cwd=tmp_path, timeout=30)  # fmt: skip
    missing = tmp_path / "nope"
    assert one_line_error(result) == f"corral: --admin-token-file {missing}: cannot read: No such file or directory"
    assert result.returncode == 2


def test_workers_true_in_tool_corral(tmp_path: Path) -> None:
    write_app(tmp_path, APP % "x")
    (tmp_path / "pyproject.toml").write_text('[tool.corral]\napp = "app.py"\nworkers = true\n')
    result = run_cli("run", cwd=tmp_path, timeout=30)
    pyproject = tmp_path / "pyproject.toml"
    assert one_line_error(result) == f"corral: invalid --workers ({pyproject}): expected N|auto, got true"
    assert result.returncode == 2


@pytest.mark.parametrize("kind", ["directory", "dangling symlink"])
def test_corral_toml_that_is_not_a_file(tmp_path: Path, kind: str) -> None:
    write_app(tmp_path, APP % "x")
    config = tmp_path / "corral.toml"
    if kind == "directory":
        config.mkdir()
    else:
        config.symlink_to(tmp_path / "gone.toml")
    for command in (["run", "app.py"], ["config"], ["status"]):
        result = run_cli(*command, cwd=tmp_path, timeout=30)
        assert one_line_error(result) == f"corral: config file {config} is a {kind}, not a file", command
        assert result.returncode == 2


@pytest.mark.parametrize(
    ("count", "line"),
    [("0", "a worker count must be from 1 to 256, got 0"), ("500", "a worker count must be from 1 to 256, got 500"),
     ("+0", "a change of the worker count must be from 1 to 255, got +0")],
)
def test_scale_count_out_of_range_is_a_usage_error(tmp_path: Path, count: str, line: str) -> None:
    """Checked before any instance is asked (there is none here): exit 2, as the docs say."""
    result = run_cli("scale", count, "--control", str(tmp_path / "nothing.sock"), cwd=tmp_path)
    assert one_line_error(result) == f"corral: {line}"
    assert result.returncode == 2


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
    assert line.startswith("corral: invalid --timeout (env CORRAL_TIMEOUT): ")


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
    write_app(tmp_path, APP % "x")
    result = run_cli("run", "app.py", "--forwarded-allow-ips", "bogus", cwd=tmp_path)
    assert one_line_error(result) == (
        "corral: invalid --forwarded-allow-ips (command line): 'bogus' is not an IP address or CIDR "
        "(for example 10.0.0.0/8, or *)"
    )
    assert result.returncode == 2
