"""Issue 9, observations 4, 5 and 8: paths are safe. `--control` never deletes what is not a socket, `--name`
is a plain name, the per-user runtime directory must be private, and every unusable path, user or group is
one line and exit 2 before anything starts."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import PLAIN_APP, Corral, corral_command, free_port, run_cli, write_app

APP = PLAIN_APP % "served"
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as a second user (CI runs as root)")


def one_line_usage_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("corral: ")
    return lines[0]


def run(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    write_app(tmp_path, APP)
    return run_cli("run", "app.py", "-b", f"127.0.0.1:{free_port()}", *args, cwd=tmp_path, timeout=60, env=env)


def test_control_never_replaces_a_file(tmp_path: Path) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    line = one_line_usage_error(run(tmp_path, "--control", "./precious.txt"))
    assert "not a socket" in line
    assert precious.read_text() == "keep me"


def test_control_never_replaces_a_symlink_or_a_directory(tmp_path: Path) -> None:
    target = tmp_path / "target.txt"
    target.write_text("keep me")
    (tmp_path / "link.sock").symlink_to(target)
    (tmp_path / "dir.sock").mkdir()
    one_line_usage_error(run(tmp_path, "--control", str(tmp_path / "link.sock")))
    one_line_usage_error(run(tmp_path, "--control", str(tmp_path / "dir.sock")))
    assert (tmp_path / "link.sock").is_symlink() and target.read_text() == "keep me"
    assert (tmp_path / "dir.sock").is_dir()


def test_a_stale_socket_is_replaced(corrals: list[Corral], tmp_path: Path) -> None:
    """What a SIGKILLed instance leaves behind (a socket no one listens on) is still taken over."""
    write_app(tmp_path, APP)
    port = free_port()
    stale = tmp_path / f"control-{port}.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(stale))
    corral = Corral(tmp_path, "app.py", "-w", "1", port=port)
    corrals.append(corral)
    corral.wait_ready(1)
    assert stat.S_ISSOCK(os.lstat(stale).st_mode)


@pytest.mark.parametrize("name", ["../../etc/x", "a/b", "", "x" * 300, ".hidden", "-w"])
def test_name_is_a_plain_name(tmp_path: Path, name: str) -> None:
    line = one_line_usage_error(run(tmp_path, "--name", name))
    assert "--name" in line and "plain name" in line


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--control", "/proc/x.sock"], "--control /proc/x.sock"),
        (["--control", "/dev/null/x.sock"], "--control /dev/null/x.sock"),
        (["--control", "/tmp/" + "d" * 120 + "/x.sock"], "too long"),
        (["--state-dir", "/proc/nope", "--https", "localhost"], "--state-dir /proc/nope"),
        (["--state-dir", "/dev/null", "--https", "localhost"], "--state-dir /dev/null"),
        (["--state-dir", "/dev/null/sub", "--https", "localhost"], "--state-dir /dev/null/sub"),
        (["--certfile", "/nonexistent", "--keyfile", "/nonexistent"], "--certfile /nonexistent: No such file"),
        (["--certfile", "/etc", "--keyfile", "/etc"], "--certfile /etc: not a regular file"),
        (["--keyfile", "/etc/hostname"], "--keyfile needs --certfile"),
        (["--https", "localhost", "--acme-ca-bundle", "/nonexistent"], "--acme-ca-bundle /nonexistent"),
        (["--app-dir", "/nonexistent"], "--app-dir"),
        (["--prestart-lock", "file:/tmp/x.lock"], "--prestart-lock needs --prestart"),
        (["--user", "nosuchuser"], "--user nosuchuser: no such user"),
        (["--group", "nosuchgroup"], "--group nosuchgroup: no such group"),
    ],
    ids=lambda value: value if isinstance(value, str) else " ".join(value)[:40],
)
def test_unusable_paths_users_and_pairs_are_one_line(tmp_path: Path, args: list[str], words: str) -> None:
    line = one_line_usage_error(run(tmp_path, "--control", str(tmp_path / "c.sock"), *args))
    assert words in line, line
    assert "Is a directory" not in line


# --- as a second user ----------------------------------------------------------------------------------------


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory `nobody` can enter (pytest's tmp dirs are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="corral-paths-"))
    path.chmod(0o755)
    write_app(path, APP)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# The interpreter may live under /root (pyenv), which `nobody` cannot enter: the command then runs in a mount
# namespace of its own where /root is a world-readable tmpfs holding only a bind mount of the interpreter's
# tree. Nothing outside that process sees the change.
HIDDEN_ROOT = not os.stat("/root").st_mode & stat.S_IXOTH and os.path.realpath(sys.executable).startswith("/root/")
EXPOSE_ROOT = """
set -e
top=$(realpath "$1" | cut -d/ -f1-3); shift
keep=$(mktemp -d)
mount --bind "$top" "$keep"
mount -t tmpfs -o mode=0755 tmpfs /root
mkdir -p "$top"
mount --bind "$keep" "$top"
exec "$@"
"""


def closed_to_others(path: Path) -> Path | None:
    """The first directory on the way to `path` that other users cannot enter, if any (below /root, see above)."""
    for directory in [*reversed(path.parents), path]:
        if str(directory).startswith("/root") and HIDDEN_ROOT:
            return None
        if not os.stat(directory).st_mode & stat.S_IXOTH:
            return directory
    return None


def nobody_command(*args: str) -> list[str]:
    closed = closed_to_others(Path(sys.prefix)) or closed_to_others(Path(__file__).resolve().parent.parent)
    if closed is not None:
        pytest.skip(f"{closed} is closed to other users, so `nobody` cannot run this checkout (chmod o+x it)")
    nobody = pwd.getpwnam("nobody")
    drop = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups", "--"]
    command = drop + corral_command(*args)
    if HIDDEN_ROOT:
        if not shutil.which("unshare"):
            pytest.skip("the interpreter is under /root and unshare is missing")
        command = ["unshare", "--mount", "sh", "-c", EXPOSE_ROOT, "sh", sys.executable, *command]
    return command


def as_nobody(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {key: value for key, value in os.environ.items() if key != "XDG_RUNTIME_DIR"}
    return subprocess.run(nobody_command(*args), cwd=cwd, capture_output=True, text=True, timeout=60,
                          env={**base, "HOME": str(cwd), **(env or {})})


@contextlib.contextmanager
def squatted(directory: Path) -> Iterator[None]:
    """`directory` made first by another user (root here), open to all: the attack of observation 5."""
    if directory.exists() or directory.is_symlink():
        pytest.skip(f"{directory} exists already")
    directory.mkdir()
    directory.chmod(0o777)
    try:
        yield
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@ROOT_ONLY
def test_a_squatted_tmp_runtime_dir_is_refused(shared_dir: Path) -> None:
    uid = pwd.getpwnam("nobody").pw_uid
    runtime = Path(f"/tmp/corral-{uid}")
    with squatted(runtime):
        bait = runtime / "corral.sock"
        with socket.socket(socket.AF_UNIX) as listener:  # the squatter waits for the victim's commands
            listener.bind(str(bait))
            listener.listen()
            bait.chmod(0o777)
            result = as_nobody(shared_dir, "run", "app.py", "-b", f"127.0.0.1:{free_port()}")
            line = one_line_usage_error(result)
            assert str(runtime) in line and "uid 0" in line
            stop = as_nobody(shared_dir, "stop")
            assert stop.returncode == 2 and "Traceback" not in stop.stderr, stop.stderr
            assert str(runtime) in stop.stderr
            listener.settimeout(0.5)
            with pytest.raises(TimeoutError):
                listener.accept()  # the victim's `stop` never reached the squatter


@ROOT_ONLY
def test_an_open_xdg_runtime_dir_is_refused(shared_dir: Path) -> None:
    xdg = shared_dir / "xdg"
    xdg.mkdir()
    (xdg / "corral").mkdir()
    os.chown(xdg, pwd.getpwnam("nobody").pw_uid, -1)
    (xdg / "corral").chmod(0o777)  # owned by root, open to all
    result = as_nobody(shared_dir, "run", "app.py", "-b", f"127.0.0.1:{free_port()}",
                       env={"XDG_RUNTIME_DIR": str(xdg)})
    line = one_line_usage_error(result)
    nobody = pwd.getpwnam("nobody").pw_uid
    assert line == (f"corral: refusing the runtime directory {xdg / 'corral'}: it belongs to uid 0, not to you "
                    f"(uid {nobody}); remove it, or give --control PATH"), line


@ROOT_ONLY
@pytest.mark.parametrize("mode", [0o700, 0o755])
def test_a_runtime_dir_of_another_user_is_refused_whatever_its_mode(shared_dir: Path, mode: int) -> None:
    """A good mode is not enough: the directory must be the user's own (another user could replace the socket)."""
    xdg = shared_dir / "xdg"
    xdg.mkdir()
    (xdg / "corral").mkdir()
    os.chown(xdg, pwd.getpwnam("nobody").pw_uid, -1)
    (xdg / "corral").chmod(mode)  # owned by root, closed to others
    result = as_nobody(shared_dir, "run", "app.py", "-b", f"127.0.0.1:{free_port()}",
                       env={"XDG_RUNTIME_DIR": str(xdg)})
    line = one_line_usage_error(result)
    assert f"refusing the runtime directory {xdg / 'corral'}: it belongs to uid 0, not to you (uid " in line, line
    assert not (xdg / "corral" / "corral.sock").exists()
    assert stat.S_IMODE(os.lstat(xdg / "corral").st_mode) == mode and os.lstat(xdg / "corral").st_uid == 0


@ROOT_ONLY
def test_check_private_dir_refuses_another_users_dir_with_a_good_mode(tmp_path: Path) -> None:
    from corral.errors import ConfigError
    from corral.paths import check_private_dir

    directory = tmp_path / "runtime"
    directory.mkdir(mode=0o700)
    nobody = pwd.getpwnam("nobody").pw_uid
    os.chown(directory, nobody, -1)
    with pytest.raises(ConfigError) as refused:
        check_private_dir(directory, create=True)
    assert str(refused.value) == (f"refusing the runtime directory {directory}: it belongs to uid {nobody}, not to "
                                  f"you (uid 0); remove it, or give --control PATH")
    assert os.lstat(directory).st_uid == nobody, "left as it was"


@ROOT_ONLY
def test_a_private_runtime_dir_is_made_and_used(corrals: list[Corral], shared_dir: Path) -> None:
    xdg = shared_dir / "xdg"
    xdg.mkdir()
    os.chown(xdg, pwd.getpwnam("nobody").pw_uid, -1)
    port = free_port()
    process = subprocess.Popen(
        nobody_command("run", "app.py", "-b", f"127.0.0.1:{port}", "-w", "1"), cwd=shared_dir,
        env={**os.environ, "XDG_RUNTIME_DIR": str(xdg), "HOME": str(shared_dir)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        from harness import wait_for

        wait_for(lambda: (xdg / "corral" / "corral.sock").exists(), 60, "the control socket")
        info = os.lstat(xdg / "corral")
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (pwd.getpwnam("nobody").pw_uid, 0o700)
    finally:
        os.killpg(process.pid, 9)
        process.wait(10)


@ROOT_ONLY
@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--user", "root"], "must be started as root"),
        (["--control", "/run/corral-test-denied/x.sock"], "Permission denied"),
    ],
)
def test_what_only_root_may_do_is_one_line_for_others(shared_dir: Path, args: list[str], words: str) -> None:
    result = as_nobody(shared_dir, "run", "app.py", "-b", f"127.0.0.1:{free_port()}",
                       "--control", str(shared_dir / "c.sock"), *args)
    line = one_line_usage_error(result)
    assert words in line, line


@ROOT_ONLY
def test_permission_denied_on_the_control_socket_is_its_own_message(
    corrals: list[Corral], shared_dir: Path
) -> None:
    corral = Corral(shared_dir, "app.py", "-w", "1")
    corrals.append(corral)
    corral.wait_ready(1)
    result = as_nobody(shared_dir, "status", "--control", str(corral.control))
    assert result.returncode == 1, result.stderr
    assert "permission denied" in result.stderr and "no corral instance" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize(("mode", "accepted"), [(0o700, True), (0o755, True), (0o770, False), (0o777, False)])
def test_runtime_dir_modes(tmp_path: Path, mode: int, accepted: bool) -> None:
    """Created 0700; an existing one (systemd makes them 0755) is refused only when others may write in it."""
    from corral.errors import ConfigError
    from corral.paths import check_private_dir

    directory = tmp_path / "runtime"
    directory.mkdir()
    directory.chmod(mode)
    if accepted:
        check_private_dir(directory, create=True)
    else:
        with pytest.raises(ConfigError) as refused:
            check_private_dir(directory, create=True)
        assert str(refused.value) == (f"refusing the runtime directory {directory}: its mode {mode:04o} lets others "
                                      "write in it (0700 is expected); remove it, or give --control PATH")
    check_private_dir(tmp_path / "new", create=True)
    assert stat.S_IMODE(os.lstat(tmp_path / "new").st_mode) == 0o700


def test_paths_is_a_lower_layer() -> None:
    """Issue 23: `paths` (used by the control client, the manager, the store and the exports) imports nothing of
    Corral's but `errors`, so no module that uses it can be part of an import cycle through it."""
    import ast

    import corral.paths

    tree = ast.parse(Path(corral.paths.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert {name for name in imported if name.split(".")[0] == "corral"} == {"corral.errors"}


@ROOT_ONLY
def test_a_client_refuses_a_control_socket_served_by_another_user(shared_dir: Path) -> None:
    """The same-user check (SO_PEERCRED) from a client that is not root: a socket another user (`daemon`) listens
    on, open to all, is refused in one line, and the command is never sent to it."""
    other = pwd.getpwnam("daemon").pw_uid
    path = shared_dir / "other.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        path.chmod(0o777)
        os.seteuid(other)  # the kernel records the listening process's credentials at listen()
        try:
            listener.listen()
        finally:
            os.seteuid(0)
        result = as_nobody(shared_dir, "status", "--control", str(path))
        assert result.returncode == 1, result.stderr
        assert result.stderr == (f"corral: the control socket {path} belongs to a process of uid {other}, not yours; "
                                 "refusing it\n"), result.stderr
        listener.settimeout(10)
        connection, _ = listener.accept()  # the client connected, checked, and closed without a word
        with connection:
            connection.settimeout(10)
            assert connection.recv(1024) == b""
