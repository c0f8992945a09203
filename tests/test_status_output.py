"""What `corral status` and `corral events` print, drawn without rich (`terminal.py`): rich's boxed table and
coloured lines on a terminal, the same text without colour when piped or under NO_COLOR, plain columns on a
terminal too narrow for the box, and no control sequence from the instance's text."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import struct
import subprocess
import termios
import time
from pathlib import Path

from corral.status_view import print_status
from corral.terminal import Terminal
from harness import OK_APP, Corral, corral_command, run_cli, write_app

ESCAPE = "\x1b["


def on_a_terminal(*args: str, cwd: Path, env: dict[str, str] | None = None, columns: int = 200) -> str:
    """What the command prints with its stdout on a real pseudo-terminal of `columns` columns."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    environment = {key: value for key, value in os.environ.items() if key not in ("NO_COLOR", "FORCE_COLOR",
                                                                                 "COLUMNS")}  # fmt: skip
    environment.update({"TERM": "xterm-256color", **(env or {})})
    process = subprocess.Popen(corral_command(*args), cwd=cwd, stdout=terminal, stderr=subprocess.PIPE,
                               env=environment)  # fmt: skip
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the command closed its end of the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    assert process.wait(60) == 0, process.stderr.read() if process.stderr else ""
    return output.decode().replace("\r\n", "\n")


def test_status_and_events_look_as_before_with_colour_only_on_a_terminal(tmp_path: Path) -> None:
    write_app(tmp_path, OK_APP)
    corral = Corral(tmp_path, "app:app", "-w", "2")
    try:
        pids = corral.wait_ready(2)
        where = ("--control", str(corral.control))
        piped = run_cli("status", *where)
        assert piped.returncode == 0, piped.stderr
        lines = piped.stdout.splitlines()
        assert ESCAPE not in piped.stdout
        assert re.fullmatch(r" +manager pid \d+ · generation 1 · 2 workers wanted · 0 restarts", lines[0])
        assert lines[1].startswith("┏━") and lines[3].startswith("┡━") and lines[-2].startswith("└─")
        assert re.sub(" +", " ", lines[2]) == ("┃ worker ┃ pid ┃ state ┃ gen ┃ uptime ┃ restarts ┃ requests ┃ cpu ┃ "
                                              "private mem ┃ pss ┃")  # fmt: skip
        assert len({len(line) for line in lines[1:-1]}) == 1, piped.stdout  # every row as wide as the box
        rows = [line for line in lines if re.match(r"│ +[12] │", line)]
        assert [int(row.split("│")[2]) for row in rows] == pids and all(" ready " in row for row in rows)
        assert "│ template 1 │" in piped.stdout and "total PSS (manager, templates, workers): " in lines[-1]
        header = lines[2].split("┃")
        assert header[1].endswith("worker ") and header[3].startswith(" state ")  # numbers right, state left

        coloured = on_a_terminal("status", *where, cwd=tmp_path)
        assert f"{ESCAPE}32mready " in coloured and f"{ESCAPE}3m " in coloured  # green state, italic title
        assert re.search(r"\x1b\[1m +worker\x1b\[0m", coloured) and f"{ESCAPE}2;3m " in coloured  # bold, dim
        plain = re.sub(r"\x1b\[[0-9;]*m", "", coloured).splitlines()
        assert plain[:4] == lines[:4] and len(plain) == len(lines)  # the same table, coloured
        for env in ({"NO_COLOR": "1"}, {"TERM": "dumb"}):
            assert ESCAPE not in on_a_terminal("status", *where, cwd=tmp_path, env=env), env
        assert f"{ESCAPE}32mready" in run_cli("status", *where, env={**os.environ, "FORCE_COLOR": "1"}).stdout

        narrow = on_a_terminal("status", *where, cwd=tmp_path, env={"NO_COLOR": "1"}, columns=60)
        assert "┃" not in narrow and re.search(r"^ +worker +pid +state +gen .* pss$", narrow, re.M), narrow
        assert all(re.search(rf"^ +\d +{pid} +ready ", narrow, re.M) for pid in pids), narrow

        events = run_cli("events", *where)
        assert events.returncode == 0 and ESCAPE not in events.stdout, events.stderr
        assert re.search(rf"^\d\d:\d\d:\d\d start {{6}}worker \d \(pid {pids[0]}\) ready", events.stdout, re.M)
        coloured = on_a_terminal("events", *where, cwd=tmp_path)
        assert re.search(rf"\d\d:\d\d:\d\d {re.escape(ESCAPE)}32mstart {{6}}{re.escape(ESCAPE)}0mworker", coloured)
        assert ESCAPE not in on_a_terminal("events", *where, cwd=tmp_path, env={"NO_COLOR": "1"})
    finally:
        corral.stop()


def test_the_instance_text_never_reaches_the_terminal_as_control_sequences() -> None:
    """A state or a pre-start command could carry an escape sequence: it is shown as '?', the layout holds."""
    out = io.StringIO()
    worker = {"id": 1, "pid": 10, "state": "re\x1b[2Jady", "generation": 1, "started_at": time.time(), "restarts": 0,
              "requests": 0, "cpu_percent": 0.0}  # fmt: skip
    print_status({"manager_pid": 9, "generation": 1, "target_workers": 1, "restarts": 0, "workers": [worker]},
                 Terminal(out, colour=True, columns=None))  # fmt: skip
    assert "\x1b[2J" not in out.getvalue() and "re?[2Jady" in out.getvalue()
    assert len({len(re.sub(r"\x1b\[[0-9;]*m", "", line)) for line in out.getvalue().splitlines()[1:]}) == 1
    out = io.StringIO()
    print_status({"manager_pid": 9, "generation": 0, "target_workers": 1, "restarts": 0, "workers": [],
                  "prestart": {"step": 1, "steps": 1, "command": "migrate [bold]\x07\x1b]0;x\x07", "seconds": 3}},
                 Terminal(out, colour=False))  # fmt: skip
    assert out.getvalue() == "manager pid 9 · pre-start step 1 of 1 running for 3s: migrate [bold]??]0;x? · 1 worker " \
                             "wanted\n"  # fmt: skip


def test_a_stream_that_cannot_encode_the_box_gets_an_ascii_one() -> None:
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="latin-1")
    print_status({"manager_pid": 9, "generation": 1, "target_workers": 1, "restarts": 0, "workers": []},
                 Terminal(out, colour=False))  # fmt: skip
    out.flush()
    lines = raw.getvalue().decode("latin-1").splitlines()
    assert lines[1].startswith("+--") and lines[2].startswith("|") and lines[3].startswith("|--")


def test_a_reader_that_went_away_is_no_traceback(tmp_path: Path) -> None:
    """`corral events | head -1`, `corral status | head -1`: exit 1 quietly once the pipe has no reader."""
    write_app(tmp_path, OK_APP)
    corral = Corral(tmp_path, "app:app", "-w", "1")
    try:
        corral.wait_ready(1)
        for args in (("status",), ("events",), ("events", "--json"), ("status", "--json")):
            reader, writer = os.pipe()
            os.close(reader)  # no reader from the start: the first write fails with EPIPE
            process = subprocess.Popen(corral_command(*args, "--control", str(corral.control)), cwd=tmp_path,
                                       stdout=writer, stderr=subprocess.PIPE, text=True)  # fmt: skip
            os.close(writer)
            _, errors = process.communicate(timeout=60)
            assert process.returncode == 1 and errors == "", (args, errors)
    finally:
        corral.stop()
