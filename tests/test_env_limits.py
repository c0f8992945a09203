"""Issue 19, item 3: an `--env-file` over the kernel's limits, and any other failure to start a template, is one
line: exit 2 (or 3) at start; on reload a refusal the caller, the log and `corral events` all see, while the old
generation keeps serving and the generation number is not used up."""

from __future__ import annotations

import json
import os
import resource
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from corral.envfile import MAX_ARG_STRLEN
from harness import OK_APP, Corral, corral_command, free_port, run_cli, wait_for, write_app

STACK = 1 << 20  # RLIMIT_STACK for the total-size cases: the kernel's ARG_MAX is then a quarter, 256 KiB
SMALL_ARG_MAX = STACK // 4


def small_stack() -> None:
    resource.setrlimit(resource.RLIMIT_STACK, (STACK, STACK))


def one_value_over(path: Path) -> None:
    path.write_text("GREETING=hello\nBIG=" + "x" * (200 * 1024) + "\n")


def total_over(path: Path) -> None:
    """Each value well under MAX_ARG_STRLEN, together over the small ARG_MAX."""
    path.write_text("".join(f"PART{i}=" + "y" * (100 * 1024) + "\n" for i in range(3)))


def only_line(text: str, *needles: str) -> str:
    lines = [line for line in text.splitlines() if all(needle in line for needle in needles)]
    assert len(lines) == 1, text[-3000:]
    return lines[0]


def test_a_value_over_the_kernel_limit_is_one_line_at_start(tmp_path: Path) -> None:
    write_app(tmp_path, OK_APP)
    one_value_over(tmp_path / "app.env")
    result = run_cli("run", "app.py", "-b", f"127.0.0.1:{free_port()}", "--control", str(tmp_path / "c.sock"),
                     "--env-file", "app.env", cwd=tmp_path, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "Argument list too long" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "app.env" in lines[0] and "BIG" in lines[0] and str(MAX_ARG_STRLEN) in lines[0], lines[0]


def test_a_total_over_arg_max_is_one_error_line_at_start(tmp_path: Path) -> None:
    write_app(tmp_path, OK_APP)
    total_over(tmp_path / "app.env")
    result = subprocess.run(
        [*corral_command(), "run", "app.py", "-b", f"127.0.0.1:{free_port()}", "--control", str(tmp_path / "c.sock"),
         "--env-file", "app.env"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, preexec_fn=small_stack,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "Argument list too long" not in result.stderr
    line = only_line(result.stderr, "ERROR")
    assert "app.env" in line and str(SMALL_ARG_MAX) in line and "ARG_MAX" in line, line


def events(corral: Corral) -> list[dict[str, object]]:
    result = run_cli("events", "--json", "--control", str(corral.control))
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def generation(corral: Corral) -> int:
    return int(corral.status()["generation"])


def assert_refused_then_fixed(corral: Corral, env_file: Path, words: list[str]) -> None:
    """The refused reload as everyone sees it; then a good reload gets the very next number."""
    corral.wait_ready(1)
    pids = corral.ready_pids()
    before = generation(corral)
    result = run_cli("reload", "--control", str(corral.control))
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "closed the connection" not in result.stderr and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and all(word in lines[0] for word in words), result.stderr
    only_line(corral.log, "reload refused", *words)
    refused = [e for e in events(corral) if "reload refused" in str(e.get("message", ""))]
    assert len(refused) == 1 and all(word in str(refused[0]["message"]) for word in words), refused
    assert corral.ready_pids() == pids and generation(corral) == before
    assert corral.get().text == "ok"
    env_file.write_text("GREETING=fixed\n")
    result = run_cli("reload", "--control", str(corral.control))
    assert result.returncode == 0, result.stderr
    assert generation(corral) == before + 1  # the refused reload used no number


@pytest.mark.parametrize(
    ("spoil", "preexec", "words"),
    [
        (one_value_over, None, ["app.env", "BIG", str(MAX_ARG_STRLEN)]),
        (total_over, small_stack, ["app.env", str(SMALL_ARG_MAX), "ARG_MAX"]),
    ],
    ids=["one value", "total"],
)
def test_a_reload_over_the_kernel_limit_is_refused_and_answered(
    tmp_path: Path, corrals: list[Corral], spoil: Callable[[Path], None], preexec: Callable[[], None] | None,
    words: list[str],
) -> None:
    write_app(tmp_path, OK_APP)
    env_file = tmp_path / "app.env"
    env_file.write_text("GREETING=hello\n")
    corral = Corral(tmp_path, "app.py", "-w", "1", "--env-file", "app.env", preexec_fn=preexec)
    corrals.append(corral)
    corral.wait_ready(1)
    spoil(env_file)
    assert_refused_then_fixed(corral, env_file, words)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_reload_without_file_descriptors_is_refused_and_answered(tmp_path: Path, corrals: list[Corral]) -> None:
    """The manager's soft RLIMIT_NOFILE lowered (prlimit) so that the control connection is accepted but no
    channel to a new template can be made: EMFILE is a refused reload, never a closed connection."""
    write_app(tmp_path, OK_APP)
    env_file = tmp_path / "app.env"
    env_file.write_text("GREETING=hello\n")
    corral = Corral(tmp_path, "app.py", "-w", "1", "--env-file", "app.env")
    corrals.append(corral)
    corral.wait_ready(1)
    pid = corral.process.pid
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    wait_for(lambda: open_fds(pid) == open_fds(pid), 10, "a steady count of open files")
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (open_fds(pid) + 2, hard))  # the accept's fd, then one
    try:
        result = run_cli("reload", "--control", str(corral.control))
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
    assert result.returncode == 1, (result.returncode, result.stderr)
    line = result.stderr.strip()
    assert "Too many open files" in line and "\n" not in line and "closed the connection" not in line, line
    only_line(corral.log, "reload refused", "Too many open files")
    assert any("Too many open files" in str(e.get("message", "")) for e in events(corral))
    assert corral.get().text == "ok" and generation(corral) == 1
    assert run_cli("reload", "--control", str(corral.control)).returncode == 0
    assert generation(corral) == 2


def test_no_file_descriptor_left_at_start_is_one_line(tmp_path: Path) -> None:
    """`corral run` under ever higher RLIMIT_NOFILE (soft and hard, so the manager cannot raise it): every run
    that fails says so in one line with a documented code, never a traceback, up to the one whose template
    could not be started (exit 3)."""
    write_app(tmp_path, OK_APP)
    seen: list[tuple[int, int, str]] = []
    for limit in range(6, 64):
        def low_nofile(limit: int = limit) -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        process = subprocess.Popen(
            corral_command("run", "app.py", "-b", f"127.0.0.1:{free_port()}", "-w", "1",
                           "--control", str(tmp_path / f"c{limit}.sock")),
            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=low_nofile,
            start_new_session=True,
        )
        try:
            _, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.communicate()
            break  # it started: the limits below were all tried
        assert "Traceback" not in stderr, (limit, stderr)
        errors = [line for line in stderr.splitlines() if "ERROR" in line or line.startswith("corral: ")]
        assert len(errors) == 1, (limit, stderr)
        seen.append((limit, process.returncode, errors[0]))
        if "cannot start a template process" in errors[0]:
            assert process.returncode == 3 and "Too many open files" in errors[0], (limit, stderr)
            return
        # Earlier failures: the manager's own descriptors (exit 1), or the listening socket's (exit 5).
        assert (process.returncode == 1 and "no file descriptor left" in errors[0]) or (
            process.returncode == 5 and "cannot listen" in errors[0] and "Too many open files" in errors[0]
        ), (limit, stderr)
    raise AssertionError(f"no run failed to start its template for want of file descriptors: {seen}")
