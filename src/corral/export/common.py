"""What the exports share: writing or printing the files, and adapting `corral run` to a container.

Every export starts from the `Settings` of the command line it was given (the same options as
`corral run`) and renders them back with `run_arguments`, so the service runs what the user ran,
changed only where the target demands it; each change is listed in docs/deployment.md.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from corral.binds import parse_bind
from corral.config import Settings
from corral.errors import ConfigError, CorralError

CONTAINER_UID = 10001
CONTAINER_WORKDIR = "/app"
CONTAINER_STATE_DIR = "/var/lib/corral"
DEFAULT_ADMIN_PORT = 9000
# Options about obtaining certificates: in a cluster, TLS ends at the Ingress or Gateway instead.
TLS_FIELDS = (
    "https",
    "http_bind",
    "acme_directory",
    "acme_email",
    "acme_ca_bundle",
    "acme_challenges",
    "certfile",
    "keyfile",
)
PRESTART_FIELDS = ("prestart", "prestart_timeout", "prestart_on_reload", "prestart_lock", "release")


@dataclass(frozen=True)
class ExportFile:
    name: str
    content: str
    mode: int = 0o644


def emit(files: list[ExportFile], out: Path | None) -> None:
    """Write the files into `out`, or print them (each after a `# file: NAME` line when several)."""
    if out is None:
        for file in files:
            if len(files) > 1:
                print(f"# file: {file.name}")
            print(file.content, end="" if file.content.endswith("\n") else "\n")
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
        for file in files:
            path = out / file.name
            path.write_text(file.content)
            path.chmod(file.mode)
            print(f"wrote {path}", file=sys.stderr)
    except OSError as exc:
        raise CorralError(f"cannot write into {out}: {exc.strerror or exc}") from None


def resource_name(text: str) -> str:
    """A DNS-1123 label (Kubernetes names, Compose services): lowercase, digits and '-', at most 63."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:63].strip("-")
    if not name:
        raise ConfigError(f"{text!r} gives no usable name: use --name with letters or digits")
    return name


@dataclass(frozen=True)
class PostgresURL:
    """A postgresql:// lock URL split from its password, which no export writes into a file."""

    url: str
    password: str | None
    user: str | None
    host: str | None
    database: str | None


def parse_postgres_url(url: str) -> PostgresURL:
    parts = urlsplit(url)
    host = parts.hostname
    netloc = parts.username or ""
    if host:
        netloc = f"{netloc}@" if netloc else ""
        netloc += f"[{host}]" if ":" in host else host
        if parts.port:
            netloc += f":{parts.port}"
    database = parts.path.lstrip("/") or None
    return PostgresURL(
        url=urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)),
        password=parts.password,
        user=parts.username,
        host=host,
        database=database,
    )


def postgres_lock(settings: Settings) -> PostgresURL | None:
    lock = settings.prestart_lock or ""
    return parse_postgres_url(lock) if lock.startswith(("postgresql://", "postgres://")) else None


def reset(settings: Settings, *names: str) -> Settings:
    """`settings` with the named options back at their defaults (left out of `corral run`)."""
    defaults = {name: Settings.model_fields[name].get_default(call_default_factory=True) for name in names}
    return settings.model_copy(update=defaults)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _all_interfaces(bind: str, what: str) -> str:
    """A loopback address inside a container is unreachable from outside it: listen on all interfaces."""
    parsed = parse_bind(bind)
    if parsed.kind == "fd":
        raise ConfigError(f"{what} {bind}: fd:// has no meaning inside a container; use HOST:PORT")
    if parsed.kind == "tcp" and is_loopback(parsed.host):
        return f"[::]:{parsed.port}" if ":" in parsed.host else f"0.0.0.0:{parsed.port}"
    return bind


@dataclass(frozen=True)
class ContainerPlan:
    """`corral run` as it runs in a container, and the facts the container files need."""

    settings: Settings
    ports: list[int]  # TCP ports the app listens on (binds and the plain-HTTP listener)
    admin_port: int
    postgres: PostgresURL | None
    notes: list[str] = field(default_factory=list)

    @property
    def health_url(self) -> str:
        """The liveness URL from inside the container."""
        ipv6 = ":" in parse_bind(self.settings.admin_bind or "").host
        return f"http://{'[::1]' if ipv6 else '127.0.0.1'}:{self.admin_port}/livez"

    def serving(self) -> Settings:
        """The servers' settings when the pre-start steps run elsewhere (a one-shot service, a Job)."""
        return reset(self.settings, *PRESTART_FIELDS)


def container_plan(settings: Settings, project: Path) -> ContainerPlan:
    """Adapt `settings` to a container: listen on all interfaces, health endpoints on, state in
    /var/lib/corral, no privilege dropping (the image's USER is not root), no password in files.
    """
    notes: list[str] = []
    binds = [_all_interfaces(bind, "--bind") for bind in settings.bind]
    http_binds = [_all_interfaces(bind, "--http-bind") for bind in settings.http_bind]
    admin_bind = _all_interfaces(settings.admin_bind or f"0.0.0.0:{DEFAULT_ADMIN_PORT}", "--admin-bind")
    admin = parse_bind(admin_bind)
    if admin.kind != "tcp":
        raise ConfigError(f"--admin-bind {admin_bind}: the health checks need a TCP address")
    if settings.user or settings.group:
        notes.append(f"--user/--group left out: the container runs as uid {CONTAINER_UID}")
    if settings.state_dir and settings.state_dir != CONTAINER_STATE_DIR:
        notes.append(f"--state-dir is {CONTAINER_STATE_DIR}, where the volume is mounted")
    changes: dict[str, object] = {
        "bind": binds,
        "http_bind": http_binds,
        "admin_bind": admin_bind,
        "user": None,
        "group": None,
        "state_dir": CONTAINER_STATE_DIR,
        "app_dir": _inside(settings.app_dir, project),
    }
    postgres = postgres_lock(settings)
    if postgres is not None:
        changes["prestart_lock"] = postgres.url
    elif settings.prestart_lock:
        changes["prestart_lock"] = f"file:{CONTAINER_STATE_DIR}/prestart.lock"
        notes.append("the file lock moved into the state directory, the only writable place")
    adapted = settings.model_copy(update=changes)
    ports = [parse_bind(bind).port for bind in binds + http_binds if parse_bind(bind).kind == "tcp"]
    return ContainerPlan(adapted, ports, admin.port, postgres, notes)


def _inside(path: str | None, project: Path) -> str | None:
    """--app-dir as a path inside the image, where the project is copied to /app."""
    if path is None or not Path(path).is_absolute():
        return path
    try:
        return str(Path(path).resolve().relative_to(project.resolve()))
    except ValueError:
        raise ConfigError(f"--app-dir {path} is outside {project}, which the image holds") from None
