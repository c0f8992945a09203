"""`corral export compose`: validated against the Compose specification's JSON schema (as vendored by
check-jsonschema), plus the references between services."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from corral.cli import parse_run_arguments
from corral.export.docker import health_command
from harness import CORRAL

APP = "async def app(scope, receive, send):\n    pass\n"


def corral(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CORRAL, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def validate(path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def references(document: dict[str, Any]) -> list[str]:
    """Problems with what the services name: dependencies, volumes."""
    problems = []
    services = document["services"]
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            if dependency not in services:
                problems.append(f"{name} depends on unknown service {dependency}")
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith(("/", ".")) and source not in document.get("volumes", {}):
                problems.append(f"{name} mounts undeclared volume {source}")
    return problems


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "main.py").write_text(APP)
    (tmp_path / "requirements.txt").write_text("starlette\n")
    return tmp_path


def export(project: Path, *args: str) -> tuple[str, dict[str, Any]]:
    out = project / "out"
    result = corral("export", "compose", *args, "--out", str(out), cwd=project)
    assert result.returncode == 0, result.stderr
    validate(out / "compose.yaml")
    text = (out / "compose.yaml").read_text()
    document = yaml.safe_load(text)
    assert references(document) == []
    return text, document


def test_app_with_prestart_and_local_postgres(project: Path) -> None:
    lock = "postgresql://shop:s3cret@localhost:5432/shop"
    args = ["main:app", "--name", "shop", "-w", "2", "--prestart", "alembic upgrade head"]
    args += ["--prestart-lock", lock, "--release", "r7", "--graceful-timeout", "25", "--drain-delay", "5"]
    text, document = export(project, *args, "--image", "registry.example/shop:7")
    assert "s3cret" not in text

    assert document["name"] == "shop"
    services = document["services"]
    assert list(services) == ["app", "prestart", "postgres"]
    app, prestart, postgres = services["app"], services["prestart"], services["postgres"]

    assert app["depends_on"] == {"prestart": {"condition": "service_completed_successfully"}}
    assert app["restart"] == "unless-stopped"
    assert app["image"] == prestart["image"] == "registry.example/shop:7"
    assert app["healthcheck"]["test"] == ["CMD", *health_command("http://127.0.0.1:9000/livez")]
    assert app["stop_grace_period"] == "40s", "drain delay + graceful timeout + margin"
    assert app["ports"] == ["8000:8000"]
    for service in (app, prestart):
        assert service["read_only"] is True
        assert service["cap_drop"] == ["ALL"]
        assert service["user"] == "10001:10001"

    served = parse_run_arguments(app["command"][1:]).settings
    assert app["command"][0] == "run"
    assert served.prestart == [] and served.prestart_lock is None, "the one-shot service runs the steps"
    assert served.workers == 2 and served.graceful_timeout == 25

    assert prestart["command"][0] == "prestart"
    steps = parse_run_arguments(prestart["command"][1:]).settings
    assert steps.prestart == ["alembic upgrade head"]
    assert steps.release == "r7"
    assert steps.prestart_lock == "postgresql://shop@postgres:5432/shop", "the local database is the service"
    assert prestart["restart"] == "no"
    assert prestart["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert prestart["environment"]["PGPASSWORD"].startswith("${POSTGRES_PASSWORD:?")

    assert postgres["environment"]["POSTGRES_USER"] == "shop"
    assert postgres["environment"]["POSTGRES_DB"] == "shop"
    assert postgres["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert set(document["volumes"]) == {"state", "pgdata"}


def test_remote_postgres_is_not_run_here(project: Path) -> None:
    lock = "postgresql://shop:s3cret@db.internal/shop"
    text, document = export(project, "main:app", "--prestart", "true", "--prestart-lock", lock)
    assert "s3cret" not in text
    assert "postgres" not in document["services"]
    prestart = document["services"]["prestart"]
    assert (
        parse_run_arguments(prestart["command"][1:]).settings.prestart_lock
        == "postgresql://shop@db.internal/shop"
    )
    assert prestart["environment"]["PGPASSWORD"].startswith("${PGPASSWORD:?")


def test_without_prestart_only_the_app(project: Path) -> None:
    _, document = export(project, "main:app", "-b", "127.0.0.1:8080", "-b", "[::1]:8081")
    assert list(document["services"]) == ["app"]
    app = document["services"]["app"]
    assert "depends_on" not in app
    assert app["ports"] == ["8080:8080", "8081:8081"]
    assert parse_run_arguments(app["command"][1:]).settings.bind == ["0.0.0.0:8080", "[::]:8081"]


def test_printed_without_out(project: Path) -> None:
    result = corral("export", "compose", "main:app", cwd=project)
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["services"]["app"]["command"][:2] == ["run", "main:app"]


def build_paths(compose: Path, service: dict[str, Any]) -> tuple[Path, Path]:
    """(context, Dockerfile) of a service's build, as Compose resolves them: the context relative to the
    Compose file, the Dockerfile relative to the context (default: Dockerfile in it)."""
    build = service["build"]
    spec = {"context": build} if isinstance(build, str) else build
    context = (compose.parent / spec["context"]).resolve()
    return context, (context / spec.get("dockerfile", "Dockerfile")).resolve()


@pytest.mark.parametrize("out", [".", "deploy"])
def test_the_build_finds_the_dockerfile_of_the_same_out(project: Path, out: str) -> None:
    """With `--out deploy` the context is the project and the Dockerfile is deploy/Dockerfile, which the
    docker export wrote; the token is a Compose secret mounted where --admin-token-file points."""
    for command in ("docker", "compose"):
        result = corral("export", command, "main:app", "--prestart", "true", "--out", out, cwd=project)
        assert result.returncode == 0, result.stderr
    compose = project / out / "compose.yaml"
    validate(compose)
    document = yaml.safe_load(compose.read_text())
    for service in document["services"].values():
        if "build" in service:
            assert build_paths(compose, service) == (project.resolve(), (project / out / "Dockerfile").resolve())
    app = document["services"]["app"]
    served = parse_run_arguments(app["command"][1:]).settings
    assert app["secrets"] == ["corral-admin-token"]
    assert served.admin_token_file == "/run/secrets/corral-admin-token"
    token_file = (compose.parent / document["secrets"]["corral-admin-token"]["file"]).resolve()
    assert token_file == (project / out / "admin-token").resolve()
    assert token_file.stat().st_mode & 0o777 == 0o600 and len(token_file.read_text().strip()) >= 32
    assert "admin_token_file" not in parse_run_arguments(document["services"]["prestart"]["command"][1:]) \
        .settings.model_fields_set, "the one-shot step has no admin listener"
    assert "healthcheck" in app, "its own: an OCI image built by podman has none"
