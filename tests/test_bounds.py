"""Issue 9, observation 7: every number has a range, refused outside it with one line naming the range; the
ranges in docs/configuration.md are the ones enforced."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from corral.config import BOUNDS, MAX_MEMORY, MIN_MEMORY, Settings, settings_from
from corral.errors import ConfigError
from corral.scoreboard import MAX_WORKERS
from harness import run_cli

ROOT = Path(__file__).resolve().parent.parent


def _number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


@pytest.mark.parametrize("field", sorted(BOUNDS))
def test_every_bounded_number_refuses_what_is_outside_its_range(field: str) -> None:
    low, high, unit = BOUNDS[field]
    expected = f"must be from {_number(low)} to {_number(high)} {unit}"
    for value in (low - 0.01 if low else -1, high * 10, float("inf"), float("-inf"), float("nan"), "inf", "1e308"):
        with pytest.raises(ConfigError) as error:
            settings_from({field: value})
        assert expected in str(error.value) and "\n" not in str(error.value), (value, str(error.value))
    for value in (low, high):
        settings_from({field: value if Settings.model_fields[field].annotation is float else int(value)})


@pytest.mark.parametrize("size", ["1KB", "16000000", 1, "2TiB", float("inf")])
def test_max_memory_range(size: object) -> None:
    with pytest.raises(ConfigError):
        settings_from({"max_memory": size})
    assert settings_from({"max_memory": MIN_MEMORY}).max_memory == MIN_MEMORY
    assert settings_from({"max_memory": "1TiB"}).max_memory == MAX_MEMORY


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--drain-delay", "1e308"], "invalid --drain-delay (command line): must be from 0 to 3,600 seconds"),
        (["--timeout", "inf"], "invalid --timeout (command line): must be from 0.5 to 86,400 seconds"),
        (["--timeout", "nan"], "invalid --timeout (command line): must be from 0.5 to 86,400 seconds"),
        (["--max-memory", "1KB"], "invalid --max-memory (command line): must be from 16MiB to 1TiB"),
    ],
)
def test_the_issues_examples_are_one_line_and_exit_2(tmp_path: Path, args: list[str], words: str) -> None:
    result = run_cli("run", "app:app", *args, cwd=tmp_path, timeout=60)
    assert result.returncode == 2, result.stderr
    assert words in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_the_documented_ranges_are_the_enforced_ones() -> None:
    reference = (ROOT / "docs" / "configuration.md").read_text()
    section = reference.split("## Ranges", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `(--[a-z0-9-]+)` \| (.+?) \|$", section, re.MULTILINE))
    for field, (low, high, unit) in BOUNDS.items():
        assert rows.get("--" + field.replace("_", "-")) == f"{_number(low)} to {_number(high)} {unit}", field
    assert rows["--workers"] == f"1 to {MAX_WORKERS}, or `auto`"
    assert rows["--max-memory"].startswith("16MiB to 1TiB")
