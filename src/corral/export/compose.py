"""`corral export compose`: the app, its pre-start steps as a one-shot service, PostgreSQL for a lock.

The app waits for the one-shot `prestart` service to complete successfully, so the steps run once
per `docker compose up`, before any server starts. Passwords come from the environment or .env
through Compose interpolation, never from this file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from corral.config import Settings, run_arguments
from corral.export.common import (
    CONTAINER_STATE_DIR,
    CONTAINER_UID,
    ContainerPlan,
    ExportFile,
    PostgresURL,
    is_loopback,
    resource_name,
)
from corral.export.docker import health_command, stop_timeout

POSTGRES_SERVICE = "postgres"


@dataclass(frozen=True)
class ComposeOptions:
    image: str | None  # tag for the image built from the Dockerfile (`corral export docker`)
    postgres_image: str = "postgres:17"


def render(plan: ContainerPlan, options: ComposeOptions) -> list[ExportFile]:
    settings = plan.settings
    image = options.image or f"{resource_name(settings.name)}:latest"
    volumes: dict[str, Any] = {"state": {}}
    env: dict[str, str] = {}
    database: dict[str, Any] = {}
    if plan.postgres is not None:
        settings, env = _postgres_lock(settings, plan.postgres)
        if plan.postgres.host is None or is_loopback(plan.postgres.host):
            database[POSTGRES_SERVICE] = _postgres_service(plan.postgres, options.postgres_image)
            volumes["pgdata"] = {}

    app: dict[str, Any] = {
        **_container(image),
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
        services["prestart"] = {
            **_container(image),
            "command": ["prestart", *run_arguments(settings)],
            "restart": "no",
            **({"environment": env} if env else {}),
        }
        if database:
            services["prestart"]["depends_on"] = {POSTGRES_SERVICE: {"condition": "service_healthy"}}
        app["depends_on"] = {"prestart": {"condition": "service_completed_successfully"}}
    services.update(database)

    document = {"name": resource_name(settings.name), "services": services, "volumes": volumes}
    header = [
        "# Written by corral export compose. Build the image from the Dockerfile of",
        "# `corral export docker`, then: docker compose up -d",
    ]
    if env:
        header.append("# Set the lock's password first, in the environment or in .env beside this file.")
    header += [f"# Note: {note}." for note in plan.notes]
    text = "\n".join(header) + "\n" + yaml.safe_dump(document, sort_keys=False, width=1000)
    return [ExportFile("compose.yaml", text)]


def _container(image: str) -> dict[str, Any]:
    """What the app and its one-shot step share: the image, the user, the hardening, the state volume."""
    return {
        "build": ".",
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
