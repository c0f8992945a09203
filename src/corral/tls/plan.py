"""Which certificates a configuration needs (shared by the manager and the workers)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from corral.binds import parse_bind
from corral.errors import ConfigError
from corral.options import Options
from corral.tls.names import is_ip, is_local_name, normalize

Source = Literal["acme", "local", "files"]

LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
LOOPBACK = ("127.0.0.1", "::1")
_WILDCARD_HOSTS = ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class CertificatePlan:
    """One certificate: its label (file name in the state directory), where it comes from, its names."""

    label: Source
    names: tuple[str, ...]


def certificate_plans(settings: Options) -> list[CertificatePlan]:
    """`--certfile` gives one certificate; otherwise the names an ACME CA may certify share one ACME
    certificate and the others (localhost, IPs, and without --acme-directory also *.test, ...) one from the
    local CA, which also covers the addresses the server listens on."""
    if settings.keyfile and not settings.certfile:
        raise ConfigError("--keyfile needs --certfile")
    try:
        names = [normalize(name) for name in settings.https]
    except ValueError as exc:
        raise ConfigError(f"invalid --https: {exc}") from exc
    if settings.certfile:
        return [CertificatePlan("files", tuple(names))]
    public = tuple(name for name in names if goes_to_acme(name, settings))
    local = [name for name in names if name not in public]
    plans = []
    if public:
        plans.append(CertificatePlan("acme", public))
    if local:
        extra = [address for address in listening_addresses(settings) if address not in local]
        plans.append(CertificatePlan("local", tuple(local + extra)))
    return plans


def only_local(name: str) -> bool:
    """Names no ACME CA can validate, private or public: IP addresses and localhost (RFC 6761)."""
    return is_ip(name) or name == "localhost" or name.endswith(".localhost")


def goes_to_acme(name: str, settings: Options) -> bool:
    """A chosen --acme-directory gets every name it can validate; Let's Encrypt (the default) only
    public ones: reserved names (*.test, *.internal, single labels...) then go to the local CA."""
    if settings.local_ca:
        return False
    if settings.acme_directory:
        return not only_local(name)
    return not is_local_name(name)


def acme_directory(settings: Options) -> str:
    return settings.acme_directory or LETS_ENCRYPT


def listening_addresses(settings: Options) -> list[str]:
    """What a client may type to reach this server: loopback, and every specific --bind host."""
    addresses = list(LOOPBACK)
    for text in settings.bind:
        bind = parse_bind(text)
        host = bind.host.strip("[]").lower()
        if bind.kind == "tcp" and host not in _WILDCARD_HOSTS and host not in addresses:
            addresses.append(host)
    return addresses


def describe_choice(settings: Options) -> list[str]:
    """One line per --https name saying where its certificate comes from (logged at start)."""
    given = {normalize(name) for name in settings.https}
    lines = []
    for plan in certificate_plans(settings):
        for name in (name for name in plan.names if name in given):
            if plan.label == "files":
                source = f"--certfile {settings.certfile}"
            elif plan.label == "acme":
                source = f"ACME directory {acme_directory(settings)}"
            elif settings.acme_directory:
                source = "local CA (IP addresses and localhost never go to an ACME directory)"
            else:
                source = "local CA (a reserved name, and no --acme-directory was given)"
            lines.append(f"https: {name}: {source}")
        extra = [name for name in plan.names if name not in given]
        if plan.label == "local" and extra:
            lines.append(f"https: the local CA certificate also covers {', '.join(extra)} (listening addresses)")
    return lines


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
