"""`corral export systemd` and `corral install`, checked by `systemd-analyze verify` and `systemctl`."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.cli import parse_run_arguments
from corral.config import settings_from
from corral.errors import ConfigError, ExitCode
from corral.export.install import systemd_running
from corral.export.systemd import SystemdOptions, _unreadable_part, corral_executable, render
from harness import CORRAL

# As root the service runs as the sudo caller: a user of the target host, which the export cannot check
# here. Without it, a DynamicUser= service could not read a project under /tmp (test_service_access.py).
SERVICE_USER = "corral-test-service"


def corral(*args: str, cwd: Path, sudo_user: str | None = SERVICE_USER) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "SUDO_USER"}
    env.update({"SUDO_USER": sudo_user} if sudo_user else {})
    return subprocess.run(
        [CORRAL, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False, env=env
    )


def unit_entries(text: str) -> dict[str, list[str]]:
    """KEY -> values, all sections together (keys do not repeat across our sections)."""
    entries: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            entries.setdefault(key, []).append(value)
    return entries


def exec_words(line: str) -> list[str]:
    """ExecStart= split as systemd does for what `quote` writes: quotes and escapes, then %% and $$."""
    return [word.replace("%%", "%").replace("$$", "$") for word in shlex.split(line)]


def verify(directory: Path, *units: str) -> None:
    """No warnings at all: systemd-analyze prints problems on stderr even when it exits 0."""
    result = subprocess.run(
        ["systemd-analyze", "verify", *units], cwd=directory, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "main.py").write_text("async def app(scope, receive, send):\n    pass\n")
    return tmp_path


def test_unit_verifies_and_carries_every_option(project: Path, tmp_path: Path) -> None:
    out = tmp_path / "units"
    args = [
        "main:app",
        "--name", "api",
        "--bind", "0.0.0.0:8080",
        "--workers", "3",
        "--graceful-timeout", "20",
        "--drain-delay", "4",
        "--max-requests", "1000",
        "--prestart", "alembic upgrade head",
        "--prestart", "echo 100% $HOME \"quoted\" done",
        "--prestart-lock", "file:locks/prestart.lock",
        "--user", SERVICE_USER,
    ]  # fmt: skip
    result = corral("export", "systemd", *args, "--out", str(out), cwd=project)
    assert result.returncode == 0, result.stderr
    assert (out / "api.service").is_file()
    verify(out, "api.service")

    entries = unit_entries((out / "api.service").read_text())
    assert entries["Type"] == ["notify"]
    assert entries["NotifyAccess"] == ["main"], "only the manager reports READY=1 and the watchdog"
    assert entries["WatchdogSec"] == ["30"]
    assert entries["Restart"] == ["on-failure"]
    assert entries["RestartSec"] == ["2"]
    # A bad option or config exits 2: restarting would only repeat the same line forever.
    assert entries["RestartPreventExitStatus"] == [str(int(ExitCode.USAGE))]
    assert entries["StateDirectoryMode"] == ["0750"], "certificates and locks: not readable by others"
    assert entries["KillMode"] == ["mixed"]
    assert entries["User"] == [SERVICE_USER]
    assert int(entries["TimeoutStopSec"][0]) > 20 + 4
    assert int(entries["TimeoutStartSec"][0]) > 2 * 600
    for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict")):
        assert entries[key] == [value]
    assert entries["PrivateTmp"] == ["no"], "the project is under /tmp: a private /tmp would hide it"
    assert entries["CapabilityBoundingSet"] == [""], "no port below 1024: no capability at all"
    assert "AmbientCapabilities" not in entries
    assert entries["ReadWritePaths"] == [str(project / "locks")]
    assert entries["WorkingDirectory"] == [str(project)]

    words = exec_words(entries["ExecStart"][0])
    assert words[:2] == [corral_executable(), "run"]
    exported = parse_run_arguments(words[2:]).settings
    given = parse_run_arguments(args).settings
    assert exported.control == "/run/corral/api/control.sock"
    assert exported.state_dir == "/var/lib/corral/api"
    assert exported.user is None, "User= replaces --user: corral does not drop privileges itself"
    assert exported.model_copy(update={"control": None, "state_dir": None, "user": None}) == given.model_copy(
        update={"user": None}
    )
    assert entries["RuntimeDirectory"] == ["corral/api"]
    assert entries["StateDirectory"] == ["corral/api"]
    assert exec_words(entries["ExecReload"][0]) == [
        corral_executable(),
        "reload",
        "--control",
        exported.control,
    ]


def test_socket_unit_for_socket_activation(project: Path, tmp_path: Path) -> None:
    out = tmp_path / "units"
    binds = ["--bind", "0.0.0.0:80", "--bind", "[::1]:8080", "--bind", f"unix:{tmp_path}/app.sock"]
    result = corral("export", "systemd", "main:app", *binds, "--socket", "--out", str(out), cwd=project)
    assert result.returncode == 0, result.stderr
    verify(out, "corral.service", "corral.socket")
    socket_entries = unit_entries((out / "corral.socket").read_text())
    assert socket_entries["ListenStream"] == ["0.0.0.0:80", "[::1]:8080", f"{tmp_path}/app.sock"]
    assert socket_entries["BindIPv6Only"] == ["ipv6-only"]
    service = unit_entries((out / "corral.service").read_text())
    assert "corral.socket" in service["Requires"]
    assert "AmbientCapabilities" not in service, "systemd binds port 80, corral needs no capability"


def test_low_port_gets_the_capability_not_root(project: Path, tmp_path: Path) -> None:
    out = tmp_path / "units"
    result = corral(
        "export", "systemd", "main:app", "-b", "0.0.0.0:443", "--user", "web", "--out", str(out), cwd=project
    )
    assert result.returncode == 0, result.stderr
    verify(out, "corral.service")
    entries = unit_entries((out / "corral.service").read_text())
    assert entries["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert entries["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert entries["User"] == ["web"]


def test_lock_password_stays_out_of_the_unit(project: Path) -> None:
    settings = settings_from(
        {
            "app": "main:app",
            "prestart": ["true"],
            "prestart_lock": "postgresql://app:s3cret@db.internal/app",
            "user": SERVICE_USER,
        }
    )
    units = render(settings, SystemdOptions(project, corral_executable()))
    text = units.files[0].content
    assert "s3cret" not in text
    assert "--prestart-lock postgresql://app@db.internal/app" in text
    assert unit_entries(text)["EnvironmentFile"] == ["/etc/corral/corral.env"]
    assert units.password == "s3cret"
    (project / "corral.service").write_text(text)
    verify(project, "corral.service")


def test_root_runs_the_service_as_the_sudo_caller(project: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("checks what an export run by root does")
    settings = settings_from({"app": "main:app"})
    options = SystemdOptions(project, corral_executable())
    as_sudo = unit_entries(render(settings, options, environ={"SUDO_USER": SERVICE_USER}).files[0].content)
    assert as_sudo["User"] == [SERVICE_USER]
    assert "DynamicUser" not in as_sudo


@pytest.fixture
def readable_install(tmp_path: Path) -> Iterator[Path]:
    """A virtual environment under /srv of the system's Python (which every user may run), seeing this
    checkout's packages through a .pth file, with a `corral` command: what a dynamic user can run. This
    interpreter may live where a dynamic user cannot go (under /root here), which the export refuses."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    version = subprocess.run([python or "python3", "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=60, check=False).stdout.strip()  # fmt: skip
    if python is None or version != str(sys.version_info[:2]) or not os.access("/srv", os.W_OK):
        pytest.skip("needs /usr/bin/python3 of this Python version and a writable /srv")
    root = Path(tempfile.mkdtemp(prefix="corral-test-", dir="/srv"))
    try:
        root.chmod(0o755)
        subprocess.run([python, "-m", "venv", "--without-pip", str(root / "venv")], check=True, timeout=120)
        site = next((root / "venv/lib").glob("python3*/site-packages"))
        here = [path for path in map(Path, sys.path) if path.name == "site-packages" and path.is_dir()]
        # addsitedir, not a bare path: the editable install of corral is itself a .pth file there.
        (site / "checkout.pth").write_text("".join(f"import site; site.addsitedir({str(path)!r})\n" for path in here))
        command = root / "venv/bin/corral"
        command.write_text(f"#!{root}/venv/bin/python\nimport sys\nfrom corral.cli import main\nsys.exit(main())\n")
        command.chmod(0o755)
        (root / "app").mkdir(mode=0o755)
        (root / "app/main.py").write_text("async def app(scope, receive, send):\n    pass\n")
        yield root
    finally:
        shutil.rmtree(root)


def test_root_without_sudo_runs_a_dynamic_user(readable_install: Path, tmp_path: Path) -> None:
    """As root with no sudo caller, the service gets DynamicUser=yes, checked by systemd-analyze."""
    if os.geteuid() != 0:
        pytest.skip("checks what an export run by root does")
    out = tmp_path / "units"
    result = subprocess.run(
        [str(readable_install / "venv/bin/corral"), "export", "systemd", "main:app", "--out", str(out)],
        cwd=readable_install / "app", capture_output=True, text=True, timeout=120, check=False,
        env={key: value for key, value in os.environ.items() if key not in ("SUDO_USER", "VIRTUAL_ENV")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    verify(out, "corral.service")
    entries = unit_entries((out / "corral.service").read_text())
    assert entries["DynamicUser"] == ["yes"]
    assert "User" not in entries
    assert entries["StateDirectory"] == ["corral/corral"] and entries["StateDirectoryMode"] == ["0750"]
    assert exec_words(entries["ExecStart"][0])[0] == str(readable_install / "venv/bin/corral")
    # This test's own interpreter, where a dynamic user cannot reach it, is refused with one line.
    blocked = _unreadable_part(Path(sys.executable), None)
    if blocked is not None:
        with pytest.raises(ConfigError, match="not readable by the service's dynamic user"):
            render(settings_from({"app": "main:app"}), SystemdOptions(readable_install / "app", corral_executable()),
                   environ={})  # fmt: skip


def test_https_alone_gets_the_ports_the_run_opens(project: Path, tmp_path: Path) -> None:
    """`--https NAME` without --bind listens on 443 and 80 (HTTP-01): the unit grants the capability, and
    `corral config` shows those binds."""
    out = tmp_path / "units"
    result = corral("export", "systemd", "main:app", "--https", "api.example.com", "--user", SERVICE_USER,
                    "--out", str(out), cwd=project)  # fmt: skip
    assert result.returncode == 0, result.stderr
    verify(out, "corral.service")
    entries = unit_entries((out / "corral.service").read_text())
    assert entries["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert entries["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    shown = corral("config", "main:app", "--https", "api.example.com", "--json", cwd=project)
    assert shown.returncode == 0, shown.stderr
    values = json.loads(shown.stdout)
    assert values["bind"]["value"] == ["0.0.0.0:443"] and values["http_bind"]["value"] == ["0.0.0.0:80"]
    local = json.loads(corral("config", "main:app", "--https", "localhost", "--json", cwd=project).stdout)
    assert local["bind"]["value"] == ["0.0.0.0:443"] and local["http_bind"]["value"] == [], "local CA: no HTTP-01"


def test_printed_without_out(project: Path) -> None:
    result = corral("export", "systemd", "main:app", "--socket", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "# file: corral.service" in result.stdout
    assert "# file: corral.socket" in result.stdout
    assert "[Service]" in result.stdout
    assert "ListenStream=127.0.0.1:8000" in result.stdout


def test_bad_input_is_one_line(project: Path) -> None:
    for args, words in (
        (["--name", "bad/name"], "invalid --name (command line): expected a plain name"),
        (["--bind", "fd://3", "--socket"], "fd:// cannot be one of them"),
        (["--workers", "0"], "invalid --workers (command line): must be from 1 to 256"),
    ):
        result = corral("export", "systemd", "main:app", *args, cwd=project)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.startswith("corral: ") and result.stderr.count("\n") == 1, result.stderr
        assert words in result.stderr, (args, result.stderr)  # refused for this reason, not another


def test_install_into_a_root_enables_the_units(project: Path, tmp_path: Path) -> None:
    root = tmp_path / "image"
    lock = "postgresql://app:s3cret@localhost/app"
    result = corral(
        "install", "main:app", "--name", "api", "--socket", "--prestart", "true", "--prestart-lock", lock,
        "--root", str(root), cwd=project,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    units = root / "etc/systemd/system"
    verify(units, "api.service", "api.socket")
    assert (units / "multi-user.target.wants/api.service").is_symlink()
    assert (units / "sockets.target.wants/api.socket").is_symlink()
    env_file = root / "etc/corral/api.env"
    assert env_file.read_text() == "PGPASSWORD=s3cret\n"
    assert env_file.stat().st_mode & 0o777 == 0o600


@pytest.mark.skipif(systemd_running(), reason="checks the answer on a host without systemd")
def test_install_without_systemd_says_what_to_do(project: Path) -> None:
    result = corral("install", "main:app", cwd=project)
    assert result.returncode == 1
    assert result.stderr.startswith("corral: systemd is not running here")
    assert "corral export systemd --out DIR" in result.stderr
    assert result.stderr.count("\n") == 1


def test_the_service_must_be_able_to_read_the_project(project: Path) -> None:
    """A project under /tmp (mode 0700 above it here) is refused where the service could not read it."""
    if os.geteuid() != 0:
        pytest.skip("checks what an export run by root does")
    dynamic = corral("export", "systemd", "main:app", cwd=project, sudo_user=None)
    assert dynamic.returncode == 2, dynamic.stderr
    assert "DynamicUser= service sees empty (private /tmp)" in dynamic.stderr
    assert dynamic.stderr.startswith("corral: ") and dynamic.stderr.count("\n") == 1
    named = corral("export", "systemd", "main:app", "--user", "nobody", cwd=project)
    assert named.returncode == 2, named.stderr
    assert "is not readable by user nobody" in named.stderr and named.stderr.count("\n") == 1


def test_env_files_become_environment_files(project: Path, tmp_path: Path) -> None:
    (project / ".env").write_text("SECRET_KEY=s3cret\n")
    (project / ".env").chmod(0o600)
    out = tmp_path / "units"
    result = corral("export", "systemd", "main:app", "--env-file", ".env", "--out", str(out), cwd=project)
    assert result.returncode == 0, result.stderr
    verify(out, "corral.service")
    text = (out / "corral.service").read_text()
    entries = unit_entries(text)
    assert entries["EnvironmentFile"] == [str(project / ".env")], "systemd reads it as root: it may stay 0600"
    assert "--env-file" not in entries["ExecStart"][0] and "s3cret" not in text


def test_admin_token_is_a_systemd_credential(project: Path, tmp_path: Path) -> None:
    """An admin listener other machines reach gets a token (else /metrics is served to nobody), given to the
    service by LoadCredential= from a root-only file; `corral install` writes that file once, mode 0600."""
    out = tmp_path / "units"
    args = ["main:app", "--name", "api", "--admin-bind", "0.0.0.0:9000", "--user", SERVICE_USER]
    result = corral("export", "systemd", *args, "--out", str(out), cwd=project)
    assert result.returncode == 0, result.stderr
    verify(out, "api.service")
    entries = unit_entries((out / "api.service").read_text())
    assert entries["LoadCredential"] == ["admin-token:/etc/corral/api.admin-token"]
    words = exec_words(entries["ExecStart"][0])
    assert parse_run_arguments(words[2:]).settings.admin_token_file == "%d/admin-token"
    token_file = out / "api.admin-token"
    assert token_file.stat().st_mode & 0o777 == 0o600 and len(token_file.read_text().strip()) >= 40

    root = tmp_path / "image"
    installed = corral("install", *args, "--root", str(root), cwd=project)
    assert installed.returncode == 0, installed.stderr
    credential = root / "etc/corral/api.admin-token"
    assert credential.stat().st_mode & 0o777 == 0o600
    assert not (root / "etc/systemd/system/api.admin-token").exists(), "only units go into the unit directory"
    token = credential.read_text()
    assert corral("install", *args, "--root", str(root), cwd=project).returncode == 0
    assert credential.read_text() == token, "kept: a Prometheus may already scrape with it"

    # The user's own token file: read by systemd, whatever its mode; loopback without a token: nothing.
    (project / "token").write_text("mine\n")
    given = corral("export", "systemd", *args, "--admin-token-file", "token", cwd=project)
    assert given.returncode == 0, given.stderr
    assert f"LoadCredential=admin-token:{project / 'token'}" in given.stdout
    local = corral("export", "systemd", "main:app", "--admin-bind", "127.0.0.1:9000", "--user", SERVICE_USER,
                   cwd=project)  # fmt: skip
    assert local.returncode == 0 and "LoadCredential" not in local.stdout, local.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own files as another user (CI is root)")
def test_install_never_writes_through_a_link_or_into_another_users_file(project: Path, tmp_path: Path) -> None:
    """`corral install` writes each unit as a new file renamed in: a symbolic link at a unit's name, another
    user's file there, or a unit directory that is a link are refused in one line, and what they point at is
    left as it was (issue 19, item 2)."""
    import pwd

    nobody = pwd.getpwnam("nobody")
    foreign = Path(tempfile.mkdtemp(prefix="corral-foreign-"))
    try:
        precious = foreign / "precious.txt"
        precious.write_text("keep me\n")
        precious.chmod(0o640)
        foreign.chmod(0o755)
        for item in (foreign, precious):
            os.chown(item, nobody.pw_uid, nobody.pw_gid)

        def refused(root: Path) -> str:
            result = corral("install", "main:app", "--name", "api", "--root", str(root), cwd=project)
            assert result.returncode == 2, result.stderr
            assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
            info = os.lstat(precious)
            assert precious.read_text() == "keep me\n"
            assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (nobody.pw_uid, 0o640)
            assert sorted(os.listdir(foreign)) == ["precious.txt"]
            return result.stderr

        linked_unit = tmp_path / "linked-unit"
        (linked_unit / "etc/systemd/system").mkdir(parents=True)
        (linked_unit / "etc/systemd/system/api.service").symlink_to(precious)
        assert "symbolic link" in refused(linked_unit)
        assert os.readlink(linked_unit / "etc/systemd/system/api.service") == str(precious)

        linked_dir = tmp_path / "linked-dir"
        (linked_dir / "etc/systemd").mkdir(parents=True)
        (linked_dir / "etc/systemd/system").symlink_to(foreign)
        assert "symbolic link" in refused(linked_dir)

        theirs = tmp_path / "theirs"
        (theirs / "etc/systemd/system").mkdir(parents=True)
        unit = theirs / "etc/systemd/system/api.service"
        unit.write_text("their unit\n")
        os.chown(unit, nobody.pw_uid, nobody.pw_gid)
        assert f"uid {nobody.pw_uid}" in refused(theirs)
        assert unit.read_text() == "their unit\n" and unit.stat().st_uid == nobody.pw_uid
    finally:
        shutil.rmtree(foreign, ignore_errors=True)
