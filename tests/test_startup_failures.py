"""An app that cannot start: the one-line cause first, then its full traceback once; a hung lifespan shows
the app's own awaiting line."""

from __future__ import annotations

import json
from pathlib import Path

from corral import channel
from corral.discovery import clip
from harness import Corral, process_tree, write_app

SETTINGS_HELPER = """
    from pydantic import BaseModel, Field

    class Settings(BaseModel):
        secret_key: str = Field(min_length=32)
        database_url: str

    def load_settings(values):
        return Settings(**values)
"""

SETTINGS_APP = """
    from helpers.config import load_settings

    settings = load_settings({"secret_key": "short"})

    async def app(scope, receive, send):
        pass
"""

FAILING_LIFESPAN = """
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    def connect_to_the_database():
        raise ConnectionRefusedError("database at 10.0.0.1:5432 refused the connection")

    @asynccontextmanager
    async def lifespan(app):
        connect_to_the_database()
        yield

    app = FastAPI(lifespan=lifespan)
"""

HUNG_LIFESPAN = """
    import asyncio
    from contextlib import asynccontextmanager

    database_ready = asyncio.Event()

    @asynccontextmanager
    async def lifespan():
        await database_ready.wait()  # the app's own awaiting line
        yield

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            await receive()
            async with lifespan():
                await send({"type": "lifespan.startup.complete"})
                await receive()
"""


def failed_start(corrals: list[Corral], tmp_path: Path, *args: str) -> list[str]:
    corral = Corral(tmp_path, "app.py", *args)
    corrals.append(corral)
    assert corral.wait_exit() == 3
    assert not process_tree(corral.process.pid)
    return corral.log.splitlines()


def assert_cause_then_traceback(lines: list[str], cause: str, frames: list[str]) -> None:
    """The first error line is the one-line cause; the traceback follows, once, with the library's frames."""
    log = "\n".join(lines)
    headline = next(i for i, line in enumerate(lines) if "the app failed to start:" in line)
    assert cause in lines[headline], log
    assert log.count("Traceback (most recent call last)") == 1, log
    start = next(i for i, line in enumerate(lines) if "Traceback (most recent call last)" in line)
    assert start > headline, log
    for frame in frames:
        assert frame in log[log.index("Traceback"):], log


def test_settings_error_deep_in_a_library_gives_its_cause_then_its_traceback(
    corrals: list[Corral], tmp_path: Path
) -> None:
    write_app(tmp_path, SETTINGS_HELPER, "helpers/config.py")
    (tmp_path / "helpers" / "__init__.py").write_text("")
    write_app(tmp_path, SETTINGS_APP)
    lines = failed_start(corrals, tmp_path, "-w", "3")
    assert_cause_then_traceback(
        lines,
        "ValidationError: 2 validation errors for Settings",
        ["app.py", "helpers/config.py", "in load_settings", "pydantic", "secret_key"],
    )
    assert not any("importlib" in line for line in lines), "\n".join(lines)


def test_settings_error_without_preload_is_printed_once(corrals: list[Corral], tmp_path: Path) -> None:
    write_app(tmp_path, SETTINGS_HELPER, "helpers/config.py")
    (tmp_path / "helpers" / "__init__.py").write_text("")
    write_app(tmp_path, SETTINGS_APP)
    lines = failed_start(corrals, tmp_path, "-w", "3", "--no-preload")
    assert_cause_then_traceback(lines, "ValidationError", ["helpers/config.py", "in load_settings"])


def test_failing_lifespan_gives_its_cause_then_its_traceback_once(corrals: list[Corral], tmp_path: Path) -> None:
    write_app(tmp_path, FAILING_LIFESPAN)
    lines = failed_start(corrals, tmp_path, "-w", "3")
    assert_cause_then_traceback(
        lines,
        "ConnectionRefusedError: database at 10.0.0.1:5432 refused the connection",
        ["in lifespan", "in connect_to_the_database"],
    )


def test_hung_lifespan_shows_the_apps_awaiting_line(corrals: list[Corral], tmp_path: Path) -> None:
    write_app(tmp_path, HUNG_LIFESPAN)
    log = "\n".join(failed_start(corrals, tmp_path, "-w", "2", "--startup-timeout", "3"))
    app_file = (tmp_path / "app.py").resolve()
    line = app_file.read_text().splitlines().index("    await database_ready.wait()  # the app's own awaiting line")
    assert f'File "{app_file}", line {line + 1} in lifespan' in log, log
    assert "in wait" in log.split(f"line {line + 1} in lifespan")[1], log  # then what it awaits: Event.wait


def test_a_huge_traceback_is_clipped_to_fit_one_datagram() -> None:
    text = "".join(f'  File "é{i}.py", line {i}, in f\n' for i in range(20_000)) + "ValueError: the end"
    clipped = clip(text)
    assert clipped.startswith("...\n") and clipped.endswith("ValueError: the end")
    assert len(json.dumps({"ev": "boot_failed", "traceback": clipped})) < channel.MAX_MESSAGE
    assert clip("short") == "short"
