"""The command line as a newcomer reads it (issue 13, items 5-8 and 10-12): --version, readable help with
defaults, `corral config` and `corral run` taking the same set, no plural slips, a quiet Quickstart, honest
test comments, and a Troubleshooting section whose messages are the ones corral (and curl) print."""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from corral import __version__
from corral.cli import option_label, run_command_parser
from corral.config import Settings
from harness import OK_APP, Corral, free_port, run_cli, wait_for, write_app

ROOT = Path(__file__).resolve().parent.parent

APP = OK_APP


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"corral {__version__} (Python {platform.python_version()}, ")


COMMANDS = [
    (), ("run",), ("config",), ("prestart",), ("status",), ("scale",), ("reload",), ("stop",), ("install",),
    ("check",), ("trust",), ("export",), ("export", "systemd"), ("export", "docker"), ("export", "compose"),
    ("export", "kubernetes"),
]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "corral")
def test_help_has_no_python_types(command: tuple[str, ...]) -> None:
    result = run_cli(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: corral")
    assert not re.search(r"<(str|int|float|path|list\[[a-z]+\])>|\[\[", result.stdout), result.stdout


def test_run_help_reads_like_the_docs() -> None:
    text = run_cli("run", "--help").stdout
    assert "Usage: corral run [OPTIONS] [APP]" in text
    for expected in ("-b, --bind HOST:PORT", "-w, --workers N|auto", "--timeout SECONDS", "--max-memory SIZE",
                     "--state-dir PATH", "--prestart-lock file:PATH|postgresql://URL", "[default: 127.0.0.1:8000]",
                     "[default: auto: from the CPUs or CPU quota]", "[default: Let's Encrypt]"):
        assert expected in re.sub(r"\s+", " ", text), expected
    # Every option with a default says it (the parameters default to None so that env and file apply).
    command = run_command_parser()
    for param in command.params:
        if param.param_type_name != "option" or param.name not in Settings.model_fields:
            continue
        default = Settings.model_fields[param.name].get_default(call_default_factory=True)
        if default not in (None, []) and not (param.is_flag and not param.secondary_opts):
            assert "[default: " in (param.help or ""), param.name


def test_config_shows_exactly_what_run_accepts(tmp_path: Path) -> None:
    """`corral config`'s rows are the options of `corral run` (APP is its argument), nothing more or less."""
    result = run_cli("config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    shown = set(re.findall(r"^│ (APP|--[a-z0-9-]+) ", result.stdout, re.MULTILINE))
    accepted = set()
    for param in run_command_parser().params:
        if param.param_type_name == "argument":
            accepted.add(param.metavar)
        elif param.name not in ("config", "help"):  # --config chooses the file; it is not a setting
            accepted.add(next(opt for opt in param.opts if opt.startswith("--")))
    assert shown == accepted
    assert {option_label(key) for key in json.loads(run_cli("config", "--json", cwd=tmp_path).stdout)} == accepted
    assert "--app" not in shown
    refused = run_cli("run", "--app", "main:app", cwd=tmp_path)
    assert refused.returncode == 2 and "No such option: --app" in refused.stderr


def test_status_counts_in_the_singular(tmp_path: Path) -> None:
    write_app(tmp_path, APP)
    server = Corral(tmp_path, "app:app", "-w", "1")
    try:
        server.wait_ready(1)
        text = run_cli("status", "--control", str(server.control)).stdout
        title = re.sub(r"\s+", " ", text)
        assert "· 1 worker wanted · 0 restarts" in title, text
        assert "1 workers" not in title
        scaled = run_cli("scale", "2", "--control", str(server.control))
        assert scaled.stdout.strip() == "scaled from 1 to 2 workers"
        server.wait_ready(2)
        assert run_cli("scale", "1", "--control", str(server.control)).stdout.strip() == "scaled from 2 to 1 worker"
    finally:
        server.stop()


def test_quickstart_is_quiet_until_the_banner() -> None:
    readme = (ROOT / "README.md").read_text()
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    first = re.findall(r"```sh\n(.+?)\n```", quickstart, re.DOTALL)[0]
    install = next(part.strip() for part in first.split("&&") if part.strip().startswith("pip install"))
    assert "-qq" in install.split() and "--disable-pip-version-check" in install.split()
    assert first.rstrip().endswith("corral run examples/hello/main.py")


def test_no_comment_refers_to_an_xfail_that_does_not_exist() -> None:
    for path in sorted((ROOT / "tests").glob("*.py")):
        text = path.read_text()
        mentions = len(re.findall(r"xfail", text, re.IGNORECASE))
        markers = len(re.findall(r"pytest\.(mark\.)?xfail\b", text))
        if path.name != Path(__file__).name:
            assert mentions == markers, f"{path.name} mentions an xfail that is not there"


# Troubleshooting: each documented message is produced for real and matched --------------------------


def troubleshooting_messages() -> list[tuple[str, re.Pattern[str]]]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Troubleshooting", 1)[1].split("\n## ", 1)[0]
    entries = re.findall(r"^### (.+?)\n\n```text\n(.+?)\n```", section, re.MULTILINE | re.DOTALL)
    patterns = []
    for title, message in entries:
        parts = re.split(r"<[A-Z_ ]+>", message)
        patterns.append((title, re.compile(".+?".join(re.escape(part) for part in parts) + "$", re.MULTILINE)))
    return patterns


def output_of(*args: str, cwd: Path) -> str:
    """What a command printed; a `run` under a name of its own, so that no other instance on the host meets it."""
    name = ("--name", f"newcomer-{os.getpid()}") if args[0] == "run" else ()
    result = run_cli(*args, *name, cwd=cwd, timeout=120)
    return result.stdout + result.stderr


def test_troubleshooting_messages_are_what_corral_prints(tmp_path: Path) -> None:
    messages = troubleshooting_messages()
    assert [title for title, _ in messages] == [
        "Port in use", "App not found", "Import failure", "Crash loop", "Untrusted local certificate",
    ]  # fmt: skip
    patterns = dict(messages)
    write_app(tmp_path, APP)
    write_app(tmp_path, 'raise RuntimeError("DATABASE_URL is not set")\n', "broken.py")
    write_app(tmp_path, """
        import asyncio, os

        async def app(scope, receive, send):
            if scope["type"] == "lifespan":
                await receive()
                await send({"type": "lifespan.startup.complete"})
                asyncio.get_running_loop().call_later(0.2, os._exit, 1)
                await receive()
    """, "crashy.py")  # fmt: skip

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert patterns["Port in use"].search(output_of("run", "app:app", "-b", f"127.0.0.1:{port}", cwd=tmp_path))
    bind = f"127.0.0.1:{free_port()}"
    assert patterns["App not found"].search(output_of("run", "nosuch:app", "-b", bind, cwd=tmp_path))
    assert patterns["Import failure"].search(output_of("run", "broken:app", "-b", bind, cwd=tmp_path))
    assert patterns["Crash loop"].search(
        output_of("run", "crashy:app", "-w", "1", "--crash-limit", "2", "-b", bind, cwd=tmp_path)
    )

    server = Corral(tmp_path, "app:app", "-w", "1", "--https", "localhost", "--state-dir", str(tmp_path / "state"))
    try:
        wait_for(lambda: "  try:" in server.log, what="the banner")
        curl = subprocess.run(["curl", "-sS", f"https://127.0.0.1:{server.port}/"], capture_output=True, text=True,
                              timeout=30)
        assert patterns["Untrusted local certificate"].search(curl.stderr), curl.stderr
        server.signal(signal.SIGTERM)
        server.wait_exit()
    finally:
        server.stop()


# The client commands' cost (issue 19, item 5) ------------------------------------------------------------

IMPORTS_OF = """
import atexit, json, sys
HEAVY = ("typer", "click", "pydantic", "pydantic_settings", "rich", "psutil")
atexit.register(lambda: print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY))),
                              file=sys.stderr))
from corral.cli import main
main(sys.argv[1:])
"""


def heavy_imports(*args: str, cwd: Path) -> tuple[list[str], subprocess.CompletedProcess[str]]:
    """The heavy libraries a `corral` command imported (printed at exit), and its result."""
    result = subprocess.run([sys.executable, "-c", IMPORTS_OF, *args], cwd=cwd, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    return json.loads(result.stderr.strip().splitlines()[-1]), result


def test_client_commands_import_neither_typer_nor_pydantic(tmp_path: Path) -> None:
    """Monitors poll these: each imports only what it needs; the table and the event lines are drawn without rich
    (only `corral top` uses it)."""
    write_app(tmp_path, APP)
    server = Corral(tmp_path, "app:app", "-w", "1")
    follow = None
    try:
        server.wait_ready(1)
        where = ("--control", str(server.control))
        for args in [
            ("status", "--json"), ("status",), ("scale", "2"), ("events", "--json", "--limit", "5"),
            ("events", "--limit", "5"), ("reload",), ("scale", "-1"),
        ]:  # fmt: skip
            imported, result = heavy_imports(*args, *where, cwd=tmp_path)
            assert result.returncode == 0, (args, result.stderr)
            assert imported == [], args
        assert "┃ worker ┃" in re.sub(" +", " ", heavy_imports("status", *where, cwd=tmp_path)[1].stdout)
        imported, result = heavy_imports("status", "--help", cwd=tmp_path)  # help comes from the typer app
        assert result.returncode == 0 and "Usage: corral status" in result.stdout and "typer" in imported
        follow = subprocess.Popen([sys.executable, "-c", IMPORTS_OF, "events", "--follow", *where], cwd=tmp_path,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        assert follow.stdout is not None and " start " in follow.stdout.readline()  # it follows now
        imported, result = heavy_imports("stop", *where, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("stopped (manager pid ") and imported == []
        followed, errors = follow.communicate(timeout=60)
        assert follow.returncode == 0, errors
        assert " stopped " in followed.splitlines()[-1] and json.loads(errors.strip().splitlines()[-1]) == []
        assert server.wait_exit() == 0
    finally:
        if follow is not None and follow.poll() is None:
            follow.kill()
        server.stop()
