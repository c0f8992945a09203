"""Metrics the platform's way: the admin token the exported containers require, kept as a secret.

An admin listener off loopback answers `/metrics` only with a token. The container exports read it
from a file (`--admin-token-file`) that the platform mounts: the `admin-token` file written into
--out (Docker, Compose), or a Kubernetes Secret. Prometheus sends it as a bearer token: the scrape
configuration is in docs/deployment.md, and the Kubernetes export adds an optional PodMonitor.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
from pathlib import Path
from typing import Any

from corral.errors import ConfigError
from corral.export.common import CONTAINER_UID, ContainerPlan, ExportFile

TOKEN_FILE = "admin-token"  # in --out, mode 0600
TOKEN_BYTES = 32


def read_token(path: Path, what: str) -> str:
    """The first line of a token file, or one clear line."""
    try:
        lines = path.read_text().strip().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} {path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    if not lines or not lines[0].strip():
        raise ConfigError(f"{what} {path} is empty")
    return lines[0].strip()


def admin_token(out: Path | None, given_file: str | None) -> tuple[str, ExportFile | None]:
    """The token and the file to write: --admin-token-file's, else the one an earlier export left in --out
    (kept, so a Prometheus already configured goes on scraping), else a new random one."""
    if given_file:
        return read_token(Path(given_file), "--admin-token-file"), None
    existing = out / TOKEN_FILE if out is not None else None
    if existing is not None and (existing.exists() or existing.is_symlink()):
        return read_token(existing, "the token file"), None
    token = secrets.token_urlsafe(TOKEN_BYTES)
    # Read in the container by its user (uid 10001): given to it when the export runs as root.
    owner = CONTAINER_UID if os.geteuid() == 0 else None
    return token, ExportFile(TOKEN_FILE, "", mode=0o600, data=f"{token}\n".encode(), owner=owner)


def token_files(out: Path | None, given_file: str | None, notes: list[str]) -> list[ExportFile]:
    """The token file to write for Docker and Compose (none if it exists), and what to do with it in `notes`."""
    _, written = admin_token(out, given_file)
    if written is None:
        return []
    notes.append(f"/metrics needs the token in {TOKEN_FILE} (mode 0600; Prometheus: docs/deployment.md)")
    if written.owner is None:
        notes.append(f"the container's user reads {TOKEN_FILE}: sudo chown {CONTAINER_UID} {TOKEN_FILE}")
    return [written]


UNWRITTEN_TOKEN = (
    "corral: printed without --out, the container's admin listener serves only /livez and /readyz to others; "
    f"--out DIR also writes the metrics token ({TOKEN_FILE})"
)


def unwritten_token(plan: ContainerPlan, out: Path | None) -> ContainerPlan | None:
    """Docker and Compose files printed without --out, where no token file can be written: the plan without
    `--admin-token-file` (a container pointed at a file never written would stop at start), else None."""
    if out is not None or plan.token_file is not None or not plan.token_mounted:
        return None
    return dataclasses.replace(plan, settings=plan.settings.model_copy(update={"admin_token_file": None}))


def token_source(out: Path | None, given_file: str | None) -> str:
    """The host file mounted as the container's token file, as a user names it."""
    if given_file:
        return str(Path(given_file).absolute())
    return f"$PWD/{os.path.relpath(out / TOKEN_FILE)}" if out is not None else f"$PWD/{TOKEN_FILE}"


TOKEN_MANIFEST = "admin-token.yaml"


def kubernetes_token(out: Path | None, given_file: str | None) -> str:
    """--admin-token-file's token, else the one of an earlier export's Secret in --out, else a new one."""
    if given_file:
        return read_token(Path(given_file), "--admin-token-file")
    existing = out / TOKEN_MANIFEST if out is not None else None
    if existing is not None and existing.is_file():
        import yaml

        try:
            document = yaml.safe_load(existing.read_text())
            return str(document["stringData"]["token"])
        except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
            raise ConfigError(f"{existing}: no token to keep ({exc.__class__.__name__}): remove it") from None
    return secrets.token_urlsafe(TOKEN_BYTES)


K8S_TOKEN_DIR = "/etc/corral/admin-token"  # the Secret's volume in a pod; the file is `token` in it


def kubernetes_secret(metadata: dict[str, Any], token: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": metadata, "type": "Opaque",
            "stringData": {"token": token}}


def kubernetes_mount(container: dict[str, Any], pod: dict[str, Any], secret: str) -> None:
    """Mount the token's Secret read-only into the pod: readable by the pod's group (fsGroup), no one else."""
    container["volumeMounts"].append({"name": "admin-token", "mountPath": K8S_TOKEN_DIR, "readOnly": True})
    pod["volumes"].append({"name": "admin-token", "secret": {"secretName": secret, "defaultMode": 0o440}})


def pod_monitor(metadata: dict[str, Any], labels: dict[str, str], secret: str, key: str) -> dict[str, Any]:
    """A Prometheus Operator PodMonitor scraping the `admin` port with the token of the Secret."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": metadata,
        "spec": {
            "selector": {"matchLabels": dict(labels)},
            "podMetricsEndpoints": [
                {
                    "port": "admin",
                    "path": "/metrics",
                    "authorization": {"type": "Bearer", "credentials": {"name": secret, "key": key}},
                }
            ],
        },
    }
