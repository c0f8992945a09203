"""Pre-start steps through the real `corral prestart` command, with file and PostgreSQL locks."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
from pathlib import Path

import psycopg
import pytest

from corral.prestart import run_prestart
from harness import CORRAL, options_from, wait_for

DEADLINE = 120.0


class Instance:
    """One `corral prestart` process, its stderr in a file so it can be read while it runs."""

    def __init__(self, args: list[str], cwd: Path, log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [CORRAL, "prestart", *args], cwd=cwd, stdout=out, stderr=subprocess.STDOUT
            )

    def output(self) -> str:
        return self.log.read_text()

    def finish(self) -> tuple[int, str]:
        try:
            code = self.proc.wait(DEADLINE)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        return code, self.output()


def start(tmp_path: Path, name: str, *args: str) -> Instance:
    return Instance(list(args), tmp_path, tmp_path / f"{name}.log")


def prestart(tmp_path: Path, *args: str) -> tuple[int, str]:
    return start(tmp_path, "single", *args).finish()


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def recorded(lock: str, release: str) -> bool:
    """Whether the lock's own record says `release` is done (read without corral's code)."""
    if lock.startswith("file:"):
        records = Path(lock.removeprefix("file:") + ".releases")
        return any(json.loads(line)["release"] == release for line in lines(records))
    with psycopg.connect(lock) as conn:
        if conn.execute("SELECT to_regclass('corral.corral_releases')").fetchone() == (None,):
            return False
        row = conn.execute("SELECT count(*) FROM corral.corral_releases WHERE release = %s", (release,)).fetchone()
        return row == (1,)



def test_one_release_runs_once_across_instances(tmp_path: Path, lock: str) -> None:
    runs = tmp_path / "runs"
    step = f"echo $$ >> {runs}; sleep 1"
    args = ["--prestart", step, "--prestart-lock", lock, "--release", "r1"]
    instances = [start(tmp_path, f"i{n}", *args) for n in range(3)]
    results = [instance.finish() for instance in instances]

    assert [code for code, _ in results] == [0, 0, 0], results
    assert len(lines(runs)) == 1
    ran = [out for _, out in results if "prestart[1]: running" in out]
    skipped = [out for _, out in results if "release r1 already done" in out]
    assert len(ran) == 1 and len(skipped) == 2, results
    assert "release r1 recorded as done" in ran[0]
    assert recorded(lock, "r1")

    assert prestart(tmp_path, *args)[0] == 0
    assert len(lines(runs)) == 1
    code, out = prestart(tmp_path, "--prestart", step, "--prestart-lock", lock, "--release", "r2")
    assert code == 0, out
    assert len(lines(runs)) == 2
    assert recorded(lock, "r2")


def test_without_release_instances_run_in_turn(tmp_path: Path, lock: str) -> None:
    events = tmp_path / "events"
    step = f"echo start $$ >> {events}; sleep 0.3; echo end $$ >> {events}"
    instances = [start(tmp_path, f"i{n}", "--prestart", step, "--prestart-lock", lock) for n in range(3)]
    results = [instance.finish() for instance in instances]

    assert [code for code, _ in results] == [0, 0, 0], results
    seen = lines(events)
    assert len(seen) == 6, seen
    pids = set()
    for begin, end in zip(seen[::2], seen[1::2], strict=True):
        assert begin.startswith("start ") and end == "end " + begin.removeprefix("start "), seen
        pids.add(begin)
    assert len(pids) == 3


@pytest.mark.parametrize("with_lock", [False, True])
def test_failing_step_stops_the_start_and_shows_its_output(
    tmp_path: Path, request: pytest.FixtureRequest, with_lock: bool
) -> None:
    never = tmp_path / "never"
    failing = "echo to-stdout; echo to-stderr >&2; exit 3"
    locking = []
    if with_lock:
        locking = ["--prestart-lock", request.getfixturevalue("postgres_url"), "--release", "r1"]
    code, out = prestart(tmp_path, "--prestart", failing, "--prestart", f"touch {never}", *locking)

    assert code == 6, out
    assert "prestart[1] | to-stdout" in out
    assert "prestart[1] | to-stderr" in out
    assert out.splitlines()[-1] == f"corral: pre-start step 1 failed with exit code 3: {failing}"
    assert "Traceback" not in out
    assert not never.exists()
    if with_lock:
        assert not recorded(locking[1], "r1")
        code, out = prestart(tmp_path, "--prestart", f"touch {never}", *locking)
        assert code == 0, out
        assert never.exists()


def test_killed_holder_hands_the_lock_over(tmp_path: Path, lock: str) -> None:
    """SIGKILL an instance in the middle of a step: its step dies with it, the next one takes over."""
    first, runs = tmp_path / "first", tmp_path / "runs"
    pids = first / "pids"
    # The first run sleeps (and is killed); the second finds `first` and ends at once.
    step = f'echo $$ >> {runs}; if mkdir {first}; then sleep 600 & echo "$$ $!" > {pids}; wait; fi'
    args = ["--prestart", step, "--prestart-lock", lock, "--release", "r1"]
    holder = start(tmp_path, "holder", *args)
    wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 2, DEADLINE, "the step to start")
    step_processes = [int(pid) for pid in pids.read_text().split()]

    waiter = start(tmp_path, "waiter", *args)
    wait_for(lambda: "waiting for the" in waiter.output(), DEADLINE, "the second instance to wait for the lock")
    assert waiter.proc.poll() is None
    holder.proc.kill()
    assert holder.finish()[0] == -signal.SIGKILL

    code, out = waiter.finish()
    assert code == 0, out
    assert "prestart[1]: running" in out
    assert len(lines(runs)) == 2
    assert recorded(lock, "r1")
    for pid in step_processes:
        wait_for(lambda pid=pid: not alive(pid), DEADLINE, f"step process {pid} to end")


def test_timeout_kills_a_hung_step(tmp_path: Path) -> None:
    pid_file, after = tmp_path / "pid", tmp_path / "after"
    step = f"echo $$ > {pid_file}; sleep 600; touch {after}"
    code, out = prestart(tmp_path, "--prestart", step, "--prestart-timeout", "1")

    assert code == 6, out
    assert out.splitlines()[-1] == f"corral: pre-start step 1 timed out after 1 s and was killed: {step}"
    shell = int(pid_file.read_text())
    wait_for(lambda: not alive(shell), DEADLINE, "the hung step to be killed")
    assert not after.exists()


def test_steps_run_in_order_from_the_config_file_with_shell_syntax(tmp_path: Path) -> None:
    (tmp_path / "corral.toml").write_text(
        'prestart = ["echo one > order", "echo two >> order && echo $((40 + 2)) | tr 4 x"]\n'
    )
    code, out = prestart(tmp_path)

    assert code == 0, out
    assert lines(tmp_path / "order") == ["one", "two"]
    assert "prestart[2] | x2" in out
    assert out.index("prestart[1]: done") < out.index("prestart[2]: running")


def test_steps_rerun_on_reload_only_when_asked(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    settings = options_from({"prestart": [f"echo x >> {marker}"]})
    run_prestart(settings, reload=True)
    assert not marker.exists()
    run_prestart(settings)
    assert lines(marker) == ["x"]
    on_reload = options_from({"prestart": [f"echo x >> {marker}"], "prestart_on_reload": True})
    run_prestart(on_reload, reload=True)
    assert lines(marker) == ["x", "x"]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        ([], 2, "corral: no pre-start steps"),
        (["--prestart", "true", "--prestart-lock", "redis://x"], 2, "corral: invalid --prestart-lock"),
        (["--prestart", "true", "--release", "r1"], 2, "corral: --release needs --prestart-lock"),
        (
            ["--prestart", "true", "--prestart-lock", "file:/nonexistent/dir/lock"],
            6,
            "corral: pre-start lock file /nonexistent/dir/lock: No such file or directory",
        ),
        (
            ["--prestart", "true", "--prestart-lock", f"postgresql://postgres@127.0.0.1:{closed_port()}/x"],
            6,
            "corral: pre-start lock: cannot connect to PostgreSQL:",
        ),
    ],
)
def test_bad_lock_or_steps_give_one_line(tmp_path: Path, args: list[str], code: int, message: str) -> None:
    got, out = prestart(tmp_path, *args)
    assert got == code, out
    assert len(out.strip().splitlines()) == 1, out
    assert out.startswith(message), out


def test_the_lock_holds_no_step_process_or_descriptor(tmp_path: Path, postgres_url: str) -> None:
    """The step does not inherit the lock: it cannot see the file lock's or the session's descriptor."""
    lock_file = tmp_path / "prestart.lock"
    listing = tmp_path / "fds"
    step = f"ls -l /proc/self/fd/ > {listing}"
    for lock in (f"file:{lock_file}", postgres_url):
        code, out = prestart(tmp_path, "--prestart", step, "--prestart-lock", lock)
        assert code == 0, out
        targets = [line.split(" -> ")[1] for line in lines(listing) if " -> " in line]
        assert str(lock_file) not in targets
        assert not [target for target in targets if target.startswith("socket:")], targets
    assert os.path.exists(lock_file)


def test_a_step_that_cannot_start_is_one_line(tmp_path: Path) -> None:
    """A full descriptor table (here a limit of 6: the step's pipes do not fit) refuses the steps in one line."""

    def few_descriptors() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (6, 6))

    done = subprocess.run([CORRAL, "prestart", "--prestart", "true"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=DEADLINE, preexec_fn=few_descriptors)
    out = done.stdout + done.stderr
    assert done.returncode == 6, out
    assert "Traceback" not in out, out
    assert out.strip().splitlines()[-1] == "corral: pre-start step 1 could not start: Too many open files: true", out
