"""Issue 19, item 2: Corral never alters a directory or file it did not create. A directory it would write in
(the state directory and what is below it, the control socket's directory, the app's metrics directory, an
export's `--out`, a pre-start lock) that is a symbolic link, another user's, or open to others is refused in one
line, and the target keeps its mode, owner and contents. With `--user`, only what Corral creates is given to
that user. Run as root (CI does): the other user is `nobody`."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from harness import OK_APP, Corral, free_port, run_cli, write_app

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own files as another user (CI is root)")

NOBODY = pwd.getpwnam("nobody") if os.geteuid() == 0 else None
Snapshot = dict[str, tuple[int, int, int, bytes | str | None]]


def snapshot(top: Path) -> Snapshot:
    """Mode, owner, group and contents (or link target) of `top` and everything below it."""
    result: Snapshot = {}
    for path in [top, *top.rglob("*")]:
        info = os.lstat(path)
        content: bytes | str | None = None
        if stat.S_ISREG(info.st_mode):
            content = path.read_bytes()
        elif stat.S_ISLNK(info.st_mode):
            content = os.readlink(path)
        result[str(path.relative_to(top))] = (info.st_mode, info.st_uid, info.st_gid, content)
    return result


@pytest.fixture
def foreign() -> Iterator[Path]:
    """A directory of another user (nobody), 0755, holding that user's file."""
    assert NOBODY is not None
    path = Path(tempfile.mkdtemp(prefix="corral-foreign-"))
    (path / "precious.txt").write_text("keep me\n")
    (path / "precious.txt").chmod(0o640)
    path.chmod(0o755)
    for item in (path, path / "precious.txt"):
        os.chown(item, NOBODY.pw_uid, NOBODY.pw_gid)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def project() -> Iterator[Path]:
    """The app's directory, which `nobody` can enter (pytest's own are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="corral-project-"))
    path.chmod(0o755)
    write_app(path, OK_APP)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`corral run` that must refuse: a run that starts serving instead is killed by the timeout (a failure)."""
    return run_cli("run", "app.py", "-b", f"127.0.0.1:{free_port()}", *args, cwd=project, timeout=45)


def refused(result: subprocess.CompletedProcess[str], *words: str, alone: bool = True) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if all(word in line for word in words)]
    assert len(lines) == 1, result.stderr
    if alone:
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return lines[0]


# --- the state directory ---------------------------------------------------------------------------------------


def test_a_state_dir_symlink_is_refused_and_its_target_untouched(project: Path, foreign: Path) -> None:
    link = project / "state"
    link.symlink_to(foreign)
    before = snapshot(foreign)
    refused(run(project, "--https", "localhost", "--state-dir", str(link), "--control", str(project / "c.sock")),
            f"--state-dir {link}", "symbolic link")
    assert snapshot(foreign) == before


def test_another_users_state_dir_is_refused_and_untouched(project: Path, foreign: Path) -> None:
    before = snapshot(foreign)
    refused(run(project, "--https", "localhost", "--state-dir", str(foreign), "--control", str(project / "c.sock")),
            f"--state-dir {foreign}", f"belongs to uid {NOBODY.pw_uid if NOBODY else ''}")
    assert snapshot(foreign) == before


def test_a_state_dir_others_can_write_in_is_refused_and_untouched(project: Path) -> None:
    state = project / "state"
    state.mkdir()
    (state / "keep.txt").write_text("mine\n")
    state.chmod(0o777)
    before = snapshot(state)
    refused(run(project, "--https", "localhost", "--state-dir", str(state), "--control", str(project / "c.sock")),
            f"--state-dir {state}", "0777 lets others write")
    assert snapshot(state) == before


@pytest.mark.parametrize("sub", ["ca", "certs"])
def test_a_symlink_inside_the_state_dir_is_refused_and_its_target_untouched(
    project: Path, foreign: Path, sub: str
) -> None:
    state = project / "state"
    state.mkdir(mode=0o700)
    (state / sub).symlink_to(foreign)
    before = snapshot(foreign)
    result = run(project, "--https", "localhost", "--state-dir", str(state), "--control", str(project / "c.sock"))
    refused(result, str(state / sub), "symbolic link", alone=False)
    assert snapshot(foreign) == before


def test_with_user_only_what_corral_creates_is_given_to_that_user(project: Path, corrals: list[Corral]) -> None:
    assert NOBODY is not None
    state = project / "state"
    state.mkdir()
    state.chmod(0o711)  # root's, and the workers may pass through it
    (state / "keep.txt").write_text("root's own\n")
    (state / "keep.txt").chmod(0o600)
    corral = Corral(project, "app.py", "-w", "1", "--https", "localhost", "--state-dir", str(state),
                    "--user", "nobody")
    corrals.append(corral)
    corral.wait_ready(1)
    keep, root = os.lstat(state / "keep.txt"), os.lstat(state)
    assert (keep.st_uid, stat.S_IMODE(keep.st_mode)) == (0, 0o600)
    assert (root.st_uid, stat.S_IMODE(root.st_mode)) == (0, 0o711)
    assert (state / "keep.txt").read_text() == "root's own\n"
    for created in ("ca", "certs", "certs/current", "challenges", "locks"):
        assert os.lstat(state / created).st_uid == NOBODY.pw_uid, created


def test_with_user_a_state_dir_the_workers_cannot_enter_is_refused_and_untouched(project: Path) -> None:
    state = project / "state"
    state.mkdir(mode=0o700)
    before = snapshot(state)
    line = refused(run(project, "--https", "localhost", "--state-dir", str(state), "--user", "nobody",
                       "--control", str(project / "c.sock")), f"--state-dir {state}", alone=False)
    assert "keeps the workers" in line
    assert snapshot(state) == before


# --- the control socket ------------------------------------------------------------------------------------------


def test_a_control_socket_through_a_symlink_is_refused_and_the_target_untouched(
    project: Path, foreign: Path
) -> None:
    link = project / "run"
    link.symlink_to(foreign)
    before = snapshot(foreign)
    refused(run(project, "--control", str(link / "x.sock")), f"--control {link / 'x.sock'}", "symbolic link")
    assert snapshot(foreign) == before


def test_a_control_socket_in_another_users_directory_is_refused(project: Path, foreign: Path) -> None:
    before = snapshot(foreign)
    refused(run(project, "--control", str(foreign / "x.sock")), str(foreign), f"uid {NOBODY.pw_uid if NOBODY else ''}")
    assert snapshot(foreign) == before


def test_another_users_stale_socket_is_never_removed(project: Path) -> None:
    assert NOBODY is not None
    sock_path = project / "x.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))  # bound, never listening: stale
    os.chown(sock_path, NOBODY.pw_uid, NOBODY.pw_gid)
    before = snapshot(project)
    refused(run(project, "--control", str(sock_path)), f"--control {sock_path}", "not yours")
    assert snapshot(project) == before


# --- the app's metrics directory --------------------------------------------------------------------------------


def test_another_users_metrics_directory_is_never_removed(project: Path, corrals: list[Corral]) -> None:
    """A directory named like a dead instance's (`corral-metrics-PID-*`) but of another user stays."""
    assert NOBODY is not None
    dead = next(pid for pid in range(4_000_000, 4_100_000) if not psutil.pid_exists(pid))
    base = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else Path(tempfile.gettempdir())
    other = base / f"corral-metrics-{dead}-foreign"
    other.mkdir(mode=0o700)
    try:
        (other / "counter_1.db").write_bytes(b"not ours")
        for item in (other, other / "counter_1.db"):
            os.chown(item, NOBODY.pw_uid, NOBODY.pw_gid)
        before = snapshot(other)
        corral = Corral(project, "app.py", "-w", "1")
        corrals.append(corral)
        corral.wait_ready(1)
        assert corral.get().text == "ok"  # serving: the clean-up of orphans ran before the app was imported
        assert snapshot(other) == before
    finally:
        shutil.rmtree(other, ignore_errors=True)


# --- exports' --out ----------------------------------------------------------------------------------------------


def export(project: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("export", "systemd", "app:app", "--user", "root", "--out", str(out), cwd=project, timeout=60)


def test_an_export_out_through_a_symlink_is_refused_and_the_target_untouched(project: Path, foreign: Path) -> None:
    link = project / "deploy"
    link.symlink_to(foreign)
    before = snapshot(foreign)
    refused(export(project, link), f"--out {link}", "symbolic link")
    assert snapshot(foreign) == before


def test_an_export_out_of_another_user_is_refused_and_untouched(project: Path, foreign: Path) -> None:
    before = snapshot(foreign)
    refused(export(project, foreign), f"--out {foreign}", "belongs to uid")
    assert snapshot(foreign) == before


def test_an_exported_file_that_is_a_symlink_is_refused_and_its_target_untouched(
    project: Path, foreign: Path
) -> None:
    out = project / "deploy"
    first = export(project, out)
    assert first.returncode == 0, first.stderr
    unit = next(path for path in out.iterdir() if path.suffix == ".service")
    unit.unlink()
    unit.symlink_to(foreign / "precious.txt")
    before = snapshot(foreign)
    refused(export(project, out), str(unit), "symbolic link")
    assert snapshot(foreign) == before


# --- pre-start lock files ----------------------------------------------------------------------------------------


def test_a_prestart_record_file_that_is_a_symlink_is_refused_and_its_target_untouched(
    project: Path, foreign: Path
) -> None:
    lock = project / "migrate.lock"
    Path(f"{lock}.releases").symlink_to(foreign / "precious.txt")
    before = snapshot(foreign)
    result = run(project, "--control", str(project / "c.sock"), "--prestart", "true",
                 "--prestart-lock", f"file:{lock}", "--release", "r1")
    refused(result, f"{lock}.releases", "symbolic link", alone=False)
    assert snapshot(foreign) == before
