"""The docs stay true: every option is documented, the Quickstart is two commands, CI runs the test one."""

from __future__ import annotations

import re
from pathlib import Path

from corral.config import Settings
from corral.errors import ExitCode

ROOT = Path(__file__).resolve().parent.parent


def test_every_option_is_in_the_configuration_reference() -> None:
    reference = (ROOT / "docs" / "configuration.md").read_text()
    for name in Settings.model_fields:
        assert f"CORRAL_{name.upper()}" in reference, name


def test_every_exit_code_is_documented() -> None:
    reference = (ROOT / "docs" / "configuration.md").read_text()
    for code in ExitCode:
        assert re.search(rf"^\| {int(code)} \|", reference, re.MULTILINE), code


def test_quickstart_has_two_commands_and_ci_runs_the_test_one() -> None:
    readme = (ROOT / "README.md").read_text()
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```sh\n(.+?)\n```", quickstart, re.DOTALL)
    assert len(commands) == 2
    assert all("\n" not in command for command in commands)
    assert "corral run examples/" in commands[0]
    assert commands[1].strip() in (ROOT / ".ci" / "run").read_text()
