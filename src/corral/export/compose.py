"""`corral export compose`: the app, its pre-start steps as a one-shot service, PostgreSQL for a lock.

The app waits for the one-shot `prestart` service to complete successfully, so the steps run once
per `docker compose up`, before any server starts. Passwords come from the environment or .env
through Compose interpolation, never from this file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from corral.config import Settings, run_arguments
from corral.export.common import (
    CONTAINER_STATE_DIR,
    CONTAINER_TOKEN,
    CONTAINER_UID,
    PRESTART_FIELDS,
    ContainerPlan,
    ExportFile,
    PostgresURL,
    is_loopback,
    only,
    parse_postgres_url,
    refuse_loopback,
    resource_name,
    warn_loopback,
)
from corral.export.docker import health_command, stop_timeout
from corral.export.metrics import TOKEN_FILE, token_files

POSTGRES_SERVICE = "postgres"


@dataclass(frozen=True)
class ComposeOptions:
    image: str | None  # tag for the image built from the Dockerfile (`corral export docker`)
    postgres_image: str = "postgres:17"
    project: Path | None = None  # the build context (default: the directory of compose.yaml)
    out: Path | None = None  # where compose.yaml goes (paths in it are relative to it)


def _local_postgres(value: str) -> PostgresURL | None:
    """A postgresql:// URL (any driver suffix) on a loopback address: the database to run as a service."""
    if not re.match(r"postgres(ql)?(\+[a-z0-9]+)?://", value):
        return None
    url = parse_postgres_url(value)
    return url if url.host is None or is_loopback(url.host) else None


def render(plan: ContainerPlan, options: ComposeOptions) -> list[ExportFile]:
    settings = plan.settings
    environment = plan.environment
    local = {key: url for key, value in environment.values.items() if (url := _local_postgres(value))}
    lock = plan.postgres if plan.postgres is not None and _local_postgres(plan.settings.prestart_lock or "") else None
    skip = frozenset([*local, *(["prestart_lock"] if lock else [])])
    refuse_loopback(settings, environment, "compose", skip=skip)
    warn_loopback(plan.environment, "compose", skip=skip)
    image = options.image or f"{resource_name(settings.name)}:latest"
    volumes: dict[str, Any] = {"state": {}}
    env: dict[str, str] = {}
    database: dict[str, Any] = {}
    if plan.postgres is not None:
        settings, env = _postgres_lock(settings, plan.postgres)
    primary = lock or next(iter(local.values()), None)
    if primary is not None:
        database[POSTGRES_SERVICE] = _postgres_service(primary, options.postgres_image)
        volumes["pgdata"] = {}
    # The app's database URLs on this machine become the `postgres` service (overriding env_file).
    app_env = {key: _to_service(value) for key, value in environment.values.items() if key in local}
    if "CORRAL_ADMIN_TOKEN" in plan.secret_options:
        app_env["CORRAL_ADMIN_TOKEN"] = "${CORRAL_ADMIN_TOKEN:?set CORRAL_ADMIN_TOKEN}"
    base = (options.out or options.project or Path.cwd()).resolve()
    project = (options.project or base).resolve()
    env_files = [os.path.relpath(path, base) for path in environment.files]
    build = _build(project, base)

    app: dict[str, Any] = {
        **_container(image, build),
        **({"env_file": env_files} if env_files else {}),
        **({"environment": app_env} if app_env else {}),
        "command": ["run", *run_arguments(plan.serving())],
        "restart": "unless-stopped",
        "ports": [f"{port}:{port}" for port in plan.ports],
        "healthcheck": {
            "test": ["CMD", *health_command(plan.health_url)],
            "interval": "10s",
            "timeout": "5s",
            "retries": 3,
            "start_period": "120s",
        },
        "stop_signal": "SIGTERM",
        "stop_grace_period": f"{stop_timeout(plan)}s",
    }
    services: dict[str, Any] = {"app": app}
    if settings.prestart:
        step_env = {**app_env, **env}
        step_env.pop("CORRAL_ADMIN_TOKEN", None)
        services["prestart"] = {
            **_container(image, build),
            **({"env_file": env_files} if env_files else {}),
            "command": ["prestart", *run_arguments(only(settings, *PRESTART_FIELDS, "log_level"))],
            "restart": "no",
            **({"environment": step_env} if step_env else {}),
        }
        if database:
            services["prestart"]["depends_on"] = {POSTGRES_SERVICE: {"condition": "service_healthy"}}
        app["depends_on"] = {"prestart": {"condition": "service_completed_successfully"}}
    elif database:
        app["depends_on"] = {POSTGRES_SERVICE: {"condition": "service_healthy"}}
    services.update(database)

    document: dict[str, Any] = {"name": resource_name(settings.name), "services": services, "volumes": volumes}
    files: list[ExportFile] = []
    notes = list(plan.notes)
    if plan.token_mounted:
        # A file secret, mounted at /run/secrets/NAME: where --admin-token-file points in the container.
        name = PurePosixPath(CONTAINER_TOKEN).name
        source = os.path.relpath(plan.token_file, base) if plan.token_file else f"./{TOKEN_FILE}"
        document["secrets"] = {name: {"file": source}}
        app["secrets"] = [name]
        files = token_files(options.out, plan.token_file, notes)
    header = [
        "# Written by corral export compose. Build the image from the Dockerfile of",
        "# `corral export docker` (the same --out), then: docker compose up -d",
    ]
    if env or database or "CORRAL_ADMIN_TOKEN" in app_env:
        header.append("# Set the passwords first (POSTGRES_PASSWORD, PGPASSWORD...), in the environment or in")
        header.append("# .env beside this file; the app's own variables come from its env_file.")
    if local:
        header.append(f"# {', '.join(local)}: the database on this machine is the `{POSTGRES_SERVICE}` service here.")
    header += [f"# Note: {note}." for note in notes]
    text = "\n".join(header) + "\n" + yaml.safe_dump(document, sort_keys=False, width=1000)
    return [ExportFile("compose.yaml", text), *files]


def _to_service(value: str) -> str:
    """A local database URL pointed at the `postgres` service, its password from POSTGRES_PASSWORD."""
    parts = urlsplit(value)
    user = parts.username or "postgres"
    secret = ":${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}" if parts.password is not None else ""
    netloc = f"{user}{secret}@{POSTGRES_SERVICE}:5432"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _build(project: Path, base: Path) -> str | dict[str, str]:
    """The build of `corral export docker` given the same --out: the project as context, and the Dockerfile
    beside this file (Compose reads `dockerfile` relative to the context)."""
    context = os.path.relpath(project, base)
    if base == project:
        return context
    return {"context": context, "dockerfile": os.path.relpath(base / "Dockerfile", project)}


def _container(image: str, build: str | dict[str, str]) -> dict[str, Any]:
    """What the app and its one-shot step share: the image, the user, the hardening, the state volume."""
    return {
        "build": build,
        "image": image,
        "user": f"{CONTAINER_UID}:{CONTAINER_UID}",
        "read_only": True,
        "tmpfs": ["/tmp"],
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "volumes": [f"state:{CONTAINER_STATE_DIR}"],
    }


def _postgres_lock(settings: Settings, lock: PostgresURL) -> tuple[Settings, dict[str, str]]:
    """A local database becomes the `postgres` service; the password is read from the environment."""
    if lock.host is None or is_loopback(lock.host):
        user = lock.user or "postgres"
        url = f"postgresql://{user}@{POSTGRES_SERVICE}:5432/{lock.database or user}"
        password = "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
    else:
        url = lock.url
        password = "${PGPASSWORD:?set PGPASSWORD, the password of the lock's database}"
    return settings.model_copy(update={"prestart_lock": url}), {"PGPASSWORD": password}


def _postgres_service(lock: PostgresURL, image: str) -> dict[str, Any]:
    user = lock.user or "postgres"
    database = lock.database or user
    return {
        "image": image,
        "restart": "unless-stopped",
        "environment": {
            "POSTGRES_USER": user,
            "POSTGRES_DB": database,
            "POSTGRES_PASSWORD": "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}",
        },
        "volumes": ["pgdata:/var/lib/postgresql/data"],
        "healthcheck": {
            "test": ["CMD", "pg_isready", "-U", user, "-d", database],
            "interval": "5s",
            "timeout": "5s",
            "retries": 12,
        },
    }
