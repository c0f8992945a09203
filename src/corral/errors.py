"""Errors that end a command with one clear line and a documented exit code (shared by all processes)."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes of `corral`; docs/configuration.md lists them for operators."""

    OK = 0
    ERROR = 1
    USAGE = 2
    APP_FAILED_TO_START = 3
    CRASH_LOOP = 4
    BIND_FAILED = 5
    PRESTART_FAILED = 6
    NOT_RUNNING = 7
    NO_MEMORY = 8


class CorralError(Exception):
    """A failure the user can act on: printed as one line, no traceback."""

    exit_code: ExitCode = ExitCode.ERROR

    def __init__(self, message: str, exit_code: ExitCode | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(CorralError):
    exit_code = ExitCode.USAGE
