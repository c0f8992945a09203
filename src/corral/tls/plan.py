"""Which certificates a configuration needs (shared by the manager and the workers)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from corral.binds import parse_bind
from corral.errors import ConfigError
from corral.options import Options
from corral.tls.names import is_local_name, normalize

Source = Literal["acme", "local", "files"]


@dataclass(frozen=True)
class CertificatePlan:
    """One certificate: its label (file name in the state directory), where it comes from, its names."""

    label: Source
    names: tuple[str, ...]


def certificate_plans(settings: Options) -> list[CertificatePlan]:
    """`--certfile` gives one certificate; otherwise public names share one ACME certificate and local
    names (localhost, IPs, *.test, ...) one from the local CA."""
    if settings.keyfile and not settings.certfile:
        raise ConfigError("--keyfile needs --certfile")
    try:
        names = [normalize(name) for name in settings.https]
    except ValueError as exc:
        raise ConfigError(f"invalid --https: {exc}") from exc
    if settings.certfile:
        return [CertificatePlan("files", tuple(names))]
    public = tuple(name for name in names if not is_local_name(name))
    local = tuple(name for name in names if is_local_name(name))
    plans = []
    if public:
        plans.append(CertificatePlan("acme", public))
    if local:
        plans.append(CertificatePlan("local", local))
    return plans


def https_enabled(settings: Options) -> bool:
    return bool(settings.https or settings.certfile)


def https_port(settings: Options) -> int:
    """The port redirects point at: the first TCP --bind."""
    for text in settings.bind:
        bind = parse_bind(text)
        if bind.kind == "tcp":
            return bind.port
    return 443


def http_binds(settings: Options) -> list[str]:
    """The plain-HTTP listeners: `--http-bind` as given; by default port 80 on all addresses when a public
    certificate may be validated over HTTP-01, none otherwise (local CA, --certfile)."""
    if settings.http_bind:
        return list(settings.http_bind)
    plans = certificate_plans(settings) if https_enabled(settings) else []
    if any(plan.label == "acme" for plan in plans) and "http-01" in settings.acme_challenges:
        return ["0.0.0.0:80"]
    return []
