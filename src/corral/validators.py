"""The checks of options beyond a type, a choice and a range: plain functions that return the value (maybe
normalised) or raise ValueError with the part of the message after "invalid --option (source): ".

`BEFORE` checks see the value as given (a string from the command line or the environment, any TOML
value); `AFTER` checks see it once pydantic has converted it to the declared type. `config.py` applies them.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Callable
from typing import Any

from corral.scoreboard import MAX_WORKERS

MIN_MEMORY = 16 * 1024**2  # below a Python worker's own footprint: every worker would be recycled at once
MAX_MEMORY = 1024**4
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_EMAIL = re.compile(r"[^@\s:/]+@[^@\s:/]+\.[^@\s:/.]+")
_SIZE_UNITS = {
    "": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "t": 1000**4, "tb": 1000**4, "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2, "gi": 1024**3,
    "gib": 1024**3, "ti": 1024**4, "tib": 1024**4,
}  # fmt: skip


def number_text(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


def check_range(value: Any, low: float, high: float, unit: str) -> Any:
    """A number within [low, high]; inf and nan are outside every range. Not a number: left to pydantic."""
    if value is None or isinstance(value, bool):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    if not (math.isfinite(number) and low <= number <= high):  # NaN fails every comparison
        raise ValueError(f"must be from {number_text(low)} to {number_text(high)} {unit}, got {value}")
    return value


def parse_size(text: object) -> int:
    """'512M', '1.5GiB', '2000000' -> bytes. K/M/G are decimal, Ki/Mi/Gi binary."""
    problem = f"not a size: {text!r} (examples: 512MiB, 1.5G, 800000000)"
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise ValueError(problem)
    if isinstance(text, float) and not math.isfinite(text):
        raise ValueError(problem)
    if isinstance(text, int | float):
        return int(text)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(problem)
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def split_list(value: Any) -> Any:
    """Environment variables give lists as comma-separated strings, or as a JSON array when an item holds a
    comma (a pre-start command, say)."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            items = json.loads(value)
        except ValueError:
            raise ValueError("starts with [ but is not a JSON array of strings") from None
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise ValueError("starts with [ but is not a JSON array of strings")
        return items
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _workers(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"expected a number of workers or auto, got {str(value).lower()}")
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return "auto"
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"expected a number of workers or auto, got {value!r}") from None
    if isinstance(value, int) and not 1 <= value <= MAX_WORKERS:
        raise ValueError(f"must be from 1 to {MAX_WORKERS}, or auto")
    return value


def _size(value: Any) -> Any:
    if value is None or value == "":
        return None
    size = parse_size(value)
    if not MIN_MEMORY <= size <= MAX_MEMORY:
        raise ValueError(f"must be from 16MiB to 1TiB, got {value}")
    return size


def check_name(value: str) -> str:
    if not NAME.fullmatch(value):
        raise ValueError(
            f"expected a plain name: 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or "
            f"digit (no '/'), got {value[:80]!r}"
        )
    return value


def _binds(value: list[str]) -> list[str]:
    from corral.binds import parse_bind

    if not value:
        raise ValueError("at least one address is needed")
    for item in value:
        parse_bind(item)
    return value


def _networks(value: list[str]) -> list[str]:
    for item in value:
        if item != "*":
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or CIDR (for example 10.0.0.0/8, or *)") from None
    return value


def _admin_bind(value: str | None) -> str | None:
    from corral.binds import parse_admin_bind

    if value is not None and parse_admin_bind(value).kind == "fd":
        raise ValueError("the admin listener takes HOST:PORT, :PORT (loopback) or unix:PATH")
    return value


def _autoscale(value: str | None) -> str | None:
    from corral.manager.policy import parse_range

    if value is None or value == "":
        return None
    low, high = parse_range(value, "MIN:MAX workers, for example 1:8")
    if not 1 <= low <= high <= MAX_WORKERS:
        raise ValueError(f"expected 1 <= MIN <= MAX <= {MAX_WORKERS}, got {value!r}")
    return f"{low}:{high}"


def _band(value: str) -> str:
    from corral.manager.policy import parse_range

    low, high = parse_range(value, "LOW:HIGH percent, for example 50:90")
    if not 1 <= low < high <= 100:
        raise ValueError(f"expected 1 <= LOW < HIGH <= 100 (percent), got {value!r}")
    return f"{low}:{high}"


def _challenges(value: list[str]) -> list[str]:
    if not value:
        raise ValueError("at least one challenge is needed (http-01, tls-alpn-01)")
    for item in value:
        if item not in ("http-01", "tls-alpn-01"):
            raise ValueError(f"unknown challenge {item!r} (http-01, tls-alpn-01)")
    return value


def host_name_problem(name: str) -> str | None:
    """Why `name` cannot be on a certificate, or None: a DNS name (a leading `*.` allowed) or an IP address."""
    from corral.tls.names import is_ip

    text = name.strip().lower().rstrip(".")
    if is_ip(text.strip("[]")):
        return None
    labels = text.removeprefix("*.").split(".")
    if not text or len(text) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return f"{name!r} is not a host name (letters, digits and '-' in dot-separated labels, or an IP address)"
    return None


def _https(value: list[str]) -> list[str]:
    for name in value:
        problem = host_name_problem(name)
        if problem:
            raise ValueError(problem)
    return value


def _email(value: str | None) -> str | None:
    if value is not None and not _EMAIL.fullmatch(value):
        raise ValueError(f"expected an e-mail address such as ops@example.com, got {value[:80]!r}")
    return value


def _directory(value: str | None) -> str | None:
    from urllib.parse import urlsplit

    if value is None:
        return None
    try:
        url = urlsplit(value)
        host = url.hostname
    except ValueError:
        host = None
    if value[:8].lower() != "https://" or not host:
        raise ValueError(f"expected an https:// URL of an ACME directory, got {value[:80]!r}")
    return value


def named_listeners(host: str | None, port: int | None, uds: str | None, fd: int | None) -> list[str]:
    """uvicorn's --host/--port, --uds and --fd as --bind values: each names one more listener."""
    binds = []
    if host is not None or port is not None:
        host = host or "127.0.0.1"
        host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        binds.append(f"{host}:{8000 if port is None else port}")
    if uds is not None:
        binds.append(f"unix:{uds}")
    if fd is not None:
        binds.append(f"fd://{fd}")
    return binds


def _host(value: str | None) -> str | None:
    if value is not None:
        _binds(named_listeners(value, None, None, None))
    return value


def _root_path(value: str) -> str:
    if value and (not value.startswith("/") or value.endswith("/") or any(c in value for c in "?# ")):
        raise ValueError(f"expected a path such as /api (starting with /, not ending with /), got {value[:80]!r}")
    return value


def _ciphers(value: str | None) -> str | None:
    import ssl

    if value is not None:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(value)
        except ssl.SSLError:
            raise ValueError(f"OpenSSL knows no cipher in {value[:80]!r}") from None
    return value


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _headers(value: list[str]) -> list[str]:
    for item in value:
        name, colon, text = item.partition(":")
        if not colon or not _TOKEN.fullmatch(name.strip()) or any(c in text for c in "\r\n\0"):
            raise ValueError(f"expected NAME:VALUE (a header name, then its value), got {item[:80]!r}")
    return value


def _globs(value: list[str]) -> list[str]:
    for item in value:
        if not item or "/" in item:
            raise ValueError(f"expected a file name pattern such as *.py (no /), got {item[:80]!r}")
    return value


BEFORE: dict[str, Callable[[Any], Any]] = {"workers": _workers, "max_memory": _size}
AFTER: dict[str, Callable[[Any], Any]] = {
    "name": check_name,
    "bind": _binds,
    "forwarded_allow_ips": _networks,
    "admin_bind": _admin_bind,
    "autoscale": _autoscale,
    "target_utilisation": _band,
    "acme_challenges": _challenges,
    "https": _https,
    "acme_email": _email,
    "acme_directory": _directory,
    "host": _host,
    "root_path": _root_path,
    "ssl_ciphers": _ciphers,
    "header": _headers,
    "reload_include": _globs,
    "reload_exclude": _globs,
}

# Options that only make sense together: (option, the one it needs, why).
PAIRS = (
    ("keyfile", "certfile", "the certificate it is the key of"),
    ("prestart_lock", "prestart", "the steps it serialises"),
    ("admin_token_file", "admin_bind", "the listener that asks for the token"),
)
