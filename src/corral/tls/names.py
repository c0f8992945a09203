"""Which names can get a public certificate, and which need the local CA."""

from __future__ import annotations

import ipaddress

_LOCAL_SUFFIXES = (".localhost", ".test", ".internal", ".local", ".example", ".invalid")


def is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


def is_local_name(name: str) -> bool:
    """True for names no public CA will certify: localhost, IP addresses, reserved suffixes."""
    name = name.lower().rstrip(".")
    return name == "localhost" or is_ip(name) or name.endswith(_LOCAL_SUFFIXES) or "." not in name


def normalize(name: str) -> str:
    """Lower case, no trailing dot, IPv6 without brackets; raises ValueError for an unusable name."""
    value = name.strip().lower().rstrip(".").strip("[]")
    if not value or any(ch.isspace() or ch in "/:@" for ch in value if not is_ip(value)):
        raise ValueError(f"not a host name: {name!r}")
    return value


def file_label(name: str) -> str:
    """A file-name-safe form of a name (wildcards and IPv6 colons replaced)."""
    return name.replace("*", "_wildcard_").replace(":", "_")
