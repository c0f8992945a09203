"""Secrets shown as `***`: the password of a URL (the lock's), the admin token.

Used where options are shown (the manager's command line in `ps`, `corral config`) so that a
secret given on the command line or in the configuration never reaches a process listing, a log
line or a terminal. The secret itself travels in the environment or a file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from corral.options import specs

MASK = "***"
# Options whose whole value is a secret (declared `secret=True`).
SECRET_OPTIONS = tuple(name for name, spec in specs().items() if spec.secret)
# user:password@ in any scheme://user:password@host URL.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/?#@:\s]*:)(?P<password>[^@/?#\s]*)(?=@)")


def mask_url(text: str) -> str:
    """`text` with the password of every URL in it replaced by ***."""
    return _URL_PASSWORD.sub(lambda match: match.group("head") + MASK, text)


def has_password(text: str) -> bool:
    return any(match.group("password") for match in _URL_PASSWORD.finditer(text))


def redact_arguments(arguments: Sequence[str]) -> list[str]:
    """Command-line arguments as `ps` may show them: secret options' values and URL passwords masked."""
    flags = tuple("--" + name.replace("_", "-") for name in SECRET_OPTIONS)
    shown: list[str] = []
    hide_next = False
    for argument in arguments:
        if hide_next:
            shown.append(MASK)
            hide_next = False
        elif argument in flags:
            shown.append(argument)
            hide_next = True
        elif argument.startswith(tuple(flag + "=" for flag in flags)):
            shown.append(argument.split("=", 1)[0] + "=" + MASK)
        else:
            shown.append(mask_url(argument))
    return shown


def redact_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """Settings as plain values, for display: secret options as ***, URL passwords masked."""
    shown: dict[str, Any] = {}
    for key, value in values.items():
        if key in SECRET_OPTIONS and value:
            shown[key] = MASK
        elif isinstance(value, str):
            shown[key] = mask_url(value)
        elif isinstance(value, list):
            shown[key] = [mask_url(item) if isinstance(item, str) else item for item in value]
        else:
            shown[key] = value
    return shown
