"""docs/migrating.md: every Corral option it names is one `corral run` accepts, every test it names exists,
and every row is either checked by a test or says why the flag does not apply."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from corral.cli_run import run_command_parser

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "migrating.md"


def rows() -> list[tuple[str, str, str]]:
    found = []
    for line in PAGE.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`") and not set(cells[0]) <= {"-", " "}:
            found.append((cells[0], cells[1], cells[2]))
    return found


def accepted_flags() -> set[str]:
    command = run_command_parser()
    return {flag for param in command.params for flag in (*param.opts, *param.secondary_opts)}


def defined_tests() -> set[str]:
    return {name for path in (ROOT / "tests").glob("test_*.py")
            for name in re.findall(r"^def (test_\w+)", path.read_text(), re.M)}


def test_the_page_has_the_three_tables() -> None:
    assert len(rows()) > 80
    text = PAGE.read_text()
    assert all(f"## {tool}" in text for tool in ("uvicorn", "gunicorn", "granian"))


@pytest.mark.parametrize(("theirs", "ours", "checked"), rows(), ids=lambda value: value[:40])
def test_each_row(theirs: str, ours: str, checked: str) -> None:
    flags = re.findall(r"`(--?[a-z][\w-]*)", ours)
    unknown = [flag for flag in flags if flag not in accepted_flags()]
    assert not unknown, f"corral run does not accept {unknown}"
    for command in re.findall(r"`corral (\w+)", ours):
        assert command in ("dev", "run", "install", "config", "check"), command
    names = re.findall(r"`(test_\w+)`", checked)
    if names:
        missing = [name for name in names if name not in defined_tests()]
        assert not missing, f"no such test: {missing}"
    else:
        assert checked.startswith("not applicable"), f"{theirs}: neither a test nor 'not applicable': {checked}"


def test_same_names_are_accepted_as_given() -> None:
    """A flag Corral says it takes under the user's name (the same text in both columns) is accepted."""
    flags = accepted_flags()
    for theirs, ours, _ in rows():
        for flag in re.findall(r"`(--[a-z][\w-]*)", theirs):
            if f"`{flag}`" in ours:
                assert flag in flags, flag
