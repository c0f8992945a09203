"""What the exports share: writing or printing the files, and adapting `corral run` to a container.

Every export starts from the `Settings` of the command line it was given (the same options as
`corral run`) and renders them back with `run_arguments`, so the service runs what the user ran,
changed only where the target demands it; each change is listed in docs/deployment.md.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from corral import paths
from corral.binds import parse_bind
from corral.config import Settings
from corral.errors import ConfigError, CorralError
from corral.export.shipped import Shipped, check_log_files, shipped

CONTAINER_UID = 10001
CONTAINER_WORKDIR = "/app"
CONTAINER_STATE_DIR = "/var/lib/corral"
DEFAULT_ADMIN_PORT = 9000
CONTAINER_TOKEN = "/run/secrets/corral-admin-token"  # the admin token's file, mounted (export/metrics.py)
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
ACME_FIELDS = ("acme_directory", "acme_email", "acme_ca_bundle", "acme_challenges", "http_bind")
PRESTART_FIELDS = ("prestart", "prestart_timeout", "prestart_on_reload", "prestart_lock", "release")


@dataclass(frozen=True)
class ExportFile:
    name: str
    content: str
    mode: int = 0o644
    data: bytes | None = None  # a binary file (Corral's wheel) or a secret, written but not printed
    owner: int | None = None  # uid given the new file (a token the container's user reads)


def emit(files: list[ExportFile], out: Path | None) -> None:
    """Write the files into `out`, or print them (each after a `# file: NAME` line when several)."""
    if out is None:
        for file in files:
            if file.data is not None:
                print(f"corral: {file.name} is written only with --out DIR", file=sys.stderr)
                continue
            if len(files) > 1:
                print(f"# file: {file.name}")
            print(file.content, end="" if file.content.endswith("\n") else "\n")
        return
    try:
        # An existing --out is used as it is (never through a symlink, never another user's); each file is
        # created with its mode from the start (a Secret's file is never readable by others) and renamed in.
        directory = paths.open_dir(out, "--out", others=0o002, mode=0o777)
        try:
            for file in files:
                data = file.data if file.data is not None else file.content.encode()
                owner = None if file.owner is None else (file.owner, -1)
                paths.replace_file(directory, file.name, data, file.mode, out / file.name, owner)
                print(f"wrote {out / file.name}", file=sys.stderr)
        finally:
            os.close(directory)
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
    copy = settings.model_copy(update=defaults)
    # model_copy marks updated fields as set, which `run_arguments` would then write out.
    object.__setattr__(copy, "__pydantic_fields_set__", copy.model_fields_set - set(names))
    return copy


def only(settings: Settings, *names: str) -> Settings:
    """`settings` with every option but the named ones back at its default."""
    return reset(settings, *(name for name in Settings.model_fields if name not in names and name != "app"))


def inert(settings: Settings) -> Settings:
    """`settings` without the options that do nothing with the others (an export writes only what acts)."""
    names: list[str] = ["env_file"]  # the platform gives the app its environment (see AppEnvironment)
    if not settings.prestart:
        names += ["prestart_timeout", "prestart_on_reload", "prestart_lock", "release"]
    if not settings.https:
        names += [field for field in ACME_FIELDS if field != "http_bind" or not settings.certfile]
    if not (settings.https or settings.certfile):
        names += ["hsts", "http_bind", "keyfile"]
    return reset(settings, *names)


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
    environment: AppEnvironment = field(default_factory=lambda: AppEnvironment([], {}))
    # Corral's own secrets, passed as environment variables (PGPASSWORD, CORRAL_ADMIN_TOKEN), never as arguments.
    secret_options: dict[str, str] = field(default_factory=dict)
    # The admin token is a mounted file (export/metrics.py): the host's --admin-token-file, else one written.
    token_file: str | None = None
    # The project's files Corral reads in the container (--log-config, ...), as the image holds them.
    shipped: tuple[Shipped, ...] = ()

    @property
    def token_mounted(self) -> bool:
        return self.settings.admin_token_file is not None

    @property
    def health_url(self) -> str:
        """The liveness URL from inside the container."""
        ipv6 = ":" in parse_bind(self.settings.admin_bind or "").host
        return f"http://{'[::1]' if ipv6 else '127.0.0.1'}:{self.admin_port}/livez"

    def serving(self) -> Settings:
        """The servers' settings when the pre-start steps run elsewhere (a one-shot service, a Job)."""
        return reset(self.settings, *PRESTART_FIELDS)


def container_plan(
    settings: Settings, project: Path, environment: AppEnvironment | None = None, dropped: tuple[str, ...] = ()
) -> ContainerPlan:
    """Adapt `settings` to a container: listen on all interfaces, health endpoints on, state in
    /var/lib/corral, no privilege dropping (the image's USER is not root), no password in files,
    only the options that act. `dropped` names options the platform replaces (TLS in a cluster): their
    files need not be in the image.
    """
    notes: list[str] = []
    settings = inert(settings)
    secret_options: dict[str, str] = {}
    token_file = settings.admin_token_file
    if settings.admin_token:
        secret_options["CORRAL_ADMIN_TOKEN"] = settings.admin_token
        settings = reset(settings, "admin_token")
    listeners = settings.bind
    if any(getattr(settings, name) is not None for name in ("host", "port", "uds", "fd")):
        listeners = settings.options().bind  # uvicorn's names for listeners, as --bind
        settings = reset(settings, "host", "port", "uds", "fd")
    binds = [_all_interfaces(bind, "--bind") for bind in listeners]
    http_binds = [_all_interfaces(bind, "--http-bind") for bind in settings.http_bind]
    admin_bind = _all_interfaces(settings.admin_bind or f"0.0.0.0:{DEFAULT_ADMIN_PORT}", "--admin-bind")
    admin = parse_bind(admin_bind)
    if admin.kind != "tcp":
        raise ConfigError(f"--admin-bind {admin_bind}: the health checks need a TCP address")
    if settings.user or settings.group:
        notes.append(f"--user/--group left out: the container runs as uid {CONTAINER_UID}")
    if settings.state_dir and settings.state_dir != CONTAINER_STATE_DIR:
        notes.append(f"--state-dir is {CONTAINER_STATE_DIR}, where the volume is mounted")
    shipped = _shipped(settings, project, dropped)
    changes: dict[str, object] = {
        "bind": binds,
        "http_bind": http_binds,
        "admin_bind": admin_bind,
        "user": None,
        "group": None,
        "state_dir": CONTAINER_STATE_DIR,
        "app_dir": _inside("--app-dir", settings.app_dir, project),
        **{name: file.path for name, file in shipped.items()},
    }
    if "CORRAL_ADMIN_TOKEN" not in secret_options:
        # Off loopback the admin listener serves /metrics only with a token: one the platform mounts.
        changes["admin_token_file"] = CONTAINER_TOKEN
    postgres = postgres_lock(settings)
    if postgres is not None:
        changes["prestart_lock"] = postgres.url
        if postgres.password:
            secret_options["PGPASSWORD"] = postgres.password
    elif settings.prestart_lock:
        changes["prestart_lock"] = f"file:{CONTAINER_STATE_DIR}/prestart.lock"
        notes.append("the file lock moved into the state directory, the only writable place")
    adapted = settings.model_copy(update=changes)
    ports = [parse_bind(bind).port for bind in binds + http_binds if parse_bind(bind).kind == "tcp"]
    environment = environment or AppEnvironment([], {})
    return ContainerPlan(
        adapted, ports, admin.port, postgres, notes, environment, secret_options, token_file, tuple(shipped.values())
    )


# File options that the container reads from the image, where the project is copied to /app.
PROJECT_FILES = {
    "log_config": "--log-config",
    "ssl_ca_certs": "--ssl-ca-certs",
    "certfile": "--certfile",
    "keyfile": "--keyfile",
    "acme_ca_bundle": "--acme-ca-bundle",
}


def _shipped(settings: Settings, project: Path, dropped: tuple[str, ...]) -> dict[str, Shipped]:
    """The set PROJECT_FILES the container reads, checked (export/shipped.py), by option name."""
    files = {
        name: shipped(flag, value, project, CONTAINER_UID)
        for name, flag in PROJECT_FILES.items()
        if name not in dropped and (value := getattr(settings, name))
    }
    if "log_config" in files:
        check_log_files("--log-config", settings.log_config or "", project / files["log_config"].path,
                        CONTAINER_WORKDIR, (CONTAINER_STATE_DIR, "/tmp"))  # fmt: skip
    return files


def _inside(flag: str, path: str | None, project: Path) -> str | None:
    """`path` as the container sees it: relative to /app, the image's copy of the project, or refused."""
    if path is None:
        return None
    try:
        inside = (project / path).resolve().relative_to(project.resolve())
    except ValueError:
        raise ConfigError(f"{flag} {path} is outside {project}, which the image holds") from None
    return path if not Path(path).is_absolute() else str(inside)


# Keys whose value is a secret: the Kubernetes export puts them in a Secret, the rest in a ConfigMap.
SECRET_KEY_PATTERN = re.compile(r"SECRET|PASSW|TOKEN|KEY|CREDENTIAL|PRIVATE|SALT|AUTH|DSN|CERT|PWD", re.IGNORECASE)


@dataclass(frozen=True)
class AppEnvironment:
    """The app's variables from the --env-file files, which every export carries the platform's way."""

    files: list[Path]  # absolute
    values: dict[str, str]  # the app's variables (CORRAL_* configure Corral and are in its options)
    secret_keys: frozenset[str] = frozenset()

    def is_secret(self, key: str) -> bool:
        """A secret: named like one (SECRET, PASSWORD, TOKEN, KEY...), a URL with a password, or --secret-key."""
        from corral.redact import has_password

        return key in self.secret_keys or bool(SECRET_KEY_PATTERN.search(key)) or has_password(self.values[key])

    @property
    def secrets(self) -> dict[str, str]:
        return {key: value for key, value in self.values.items() if self.is_secret(key)}

    @property
    def config(self) -> dict[str, str]:
        return {key: value for key, value in self.values.items() if not self.is_secret(key)}


def app_environment(settings: Settings, cwd: Path, secret_keys: tuple[str, ...] = ()) -> AppEnvironment:
    from corral.envfile import app_variables, read_env_files

    files = [(cwd / path).resolve() for path in settings.env_file]
    values = app_variables(read_env_files(files))
    unknown = [key for key in secret_keys if key not in values]
    if unknown:
        raise ConfigError(f"--secret-key {unknown[0]}: no such variable in the --env-file files")
    return AppEnvironment(files, values, frozenset(secret_keys))


_HOST_IN_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def loopback_host(value: str) -> str | None:
    """The loopback host `value` points at (a URL's host, or a bare HOST[:PORT]), else None."""
    if _HOST_IN_URL.match(value):
        try:
            host = urlsplit(value).hostname
        except ValueError:
            return None
    else:
        text = value.strip()
        if text.startswith("["):
            host = text[1:].split("]")[0]
        else:
            host = text.rsplit(":", 1)[0] if text.count(":") == 1 else text
    return host if host and is_loopback(host) else None


# Schemes of the URLs the app itself connects to (databases, caches, brokers; `+driver` suffixes aside): a
# loopback host there is the container itself, where no such server runs.
CONNECTING_SCHEMES = frozenset(
    {
        *("postgres", "postgresql", "cockroachdb", "mysql", "mariadb", "mssql", "sqlserver", "oracle"),
        *("clickhouse", "cassandra", "mongodb", "redis", "rediss", "valkey", "valkeys", "memcached", "memcache"),
        *("amqp", "amqps", "kafka", "nats", "elasticsearch", "opensearch"),
    }
)


# A bare HOST[:PORT] under such a key is a server the app connects to as well (CACHE_HOST, DB_HOST, PGHOST).
_SERVER_KEY = re.compile(
    r"DATABASE|(^|_)(DB|PG)|POSTGRES|MYSQL|MARIADB|MONGO|REDIS|VALKEY|CACHE|MEMCACHE|BROKER|AMQP|RABBIT|KAFKA|CELERY",
    re.IGNORECASE,
)


def connects(key: str, value: str) -> bool:
    """Whether the app connects to `value`: a database, cache or broker URL, or a bare address under a key
    naming one."""
    if _HOST_IN_URL.match(value):
        return value.split("://", 1)[0].split("+", 1)[0].lower() in CONNECTING_SCHEMES
    return bool(_SERVER_KEY.search(key))


def refuse_loopback(
    settings: Settings, environment: AppEnvironment, target: str, *, skip: frozenset[str] = frozenset()
) -> None:
    """A loopback address the container connects to is the container itself: refuse with one line.

    Only where the container connects: --prestart-lock and database, cache and broker URLs; any other
    loopback value (a browser's origin, say) gets a warning from `loopback_warnings`. `skip` names the
    variables the export rewires itself (Compose's database service)."""
    from corral.redact import mask_url

    where = "the pod" if target == "kubernetes" else "the container"
    lock = settings.prestart_lock or ""
    host = loopback_host(lock) if "prestart_lock" not in skip else None
    if host:
        raise ConfigError(
            f"--prestart-lock {mask_url(lock)} points at {host}, which in {where} is {where} itself: "
            "give the database's address as it is reached from there with --prestart-lock URL"
        )
    for key, value in environment.values.items():
        host = loopback_host(value)
        if host and key not in skip and connects(key, value):
            raise ConfigError(
                f"{key}={mask_url(value)} (--env-file) points at {host}, which in {where} is {where} itself: "
                "give the address reached from there in an env file for the deployment (--env-file FILE)"
            )


def warn_loopback(environment: AppEnvironment, target: str, *, skip: frozenset[str] = frozenset()) -> None:
    """One line on stderr per variable naming a loopback address that `refuse_loopback` lets through."""
    where = "the pod" if target == "kubernetes" else "the container"
    for key, value in environment.values.items():
        host = loopback_host(value)
        if host and key not in skip and not connects(key, value):
            print(
                f"corral: warning: {key} (--env-file) names {host}, which in {where} is {where} itself: right for "
                "an address only browsers use (a CORS origin), wrong for one the app connects to",
                file=sys.stderr,
            )
