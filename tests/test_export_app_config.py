"""The exports of an alembic app carry everything it needs to start (issue 10, obs. 1, 2, 4, 5, 9).

The app is shaped like the one in the report: settings from environment variables and a .env
file, pre-start = `alembic upgrade head` and a first-user step, a PostgreSQL lock. Each export is
read back: every variable of the env file reaches the containers, no loopback address is carried,
no secret is written in a plain field, and no option is written where it does nothing.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from corral.cli import parse_run_arguments
from harness import CORRAL
from test_export_compose import references, validate
from test_export_kubernetes import by_kind, consistency_problems, kubernetes_validate

PASSWORD = "db-Pa55"
APP = """
import os

SECRET_KEY = os.environ["SECRET_KEY"]
DATABASE_URL = os.environ["DATABASE_URL"]

async def app(scope, receive, send):
    pass
"""
LOCAL_ENV = (
    "SECRET_KEY=change-me-secret\n"
    f"DATABASE_URL=postgresql+psycopg://app:{PASSWORD}@127.0.0.1:55432/app\n"
    "FIRST_SUPERUSER=admin@example.com\n"
    "FIRST_SUPERUSER_PASSWORD=first-Pa55\n"
    "PROJECT_NAME=Full Stack\n"
    "CORRAL_WORKERS=2\n"
)
CLUSTER_ENV = LOCAL_ENV.replace("127.0.0.1:55432", "db.prod.svc:5432")
STEPS = ["--prestart", "alembic upgrade head", "--prestart", "python -m app.initial_data"]


def corral(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CORRAL, *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "app").mkdir()
    (tmp_path / "app/__init__.py").write_text("")
    (tmp_path / "app/main.py").write_text(APP)
    (tmp_path / "alembic.ini").write_text("[alembic]\nscript_location = migrations\n")
    (tmp_path / "requirements.txt").write_text("alembic==1.13.2\nsqlmodel==0.0.21\n")
    (tmp_path / ".env").write_text(LOCAL_ENV)
    (tmp_path / ".env.production").write_text(CLUSTER_ENV)
    return tmp_path


def keys(text: str) -> set[str]:
    return {line.split("=", 1)[0] for line in text.splitlines() if "=" in line and not line.startswith("CORRAL_")}


def one_line(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("corral: ") and result.stderr.count("\n") == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    assert PASSWORD not in result.stderr


def test_compose_carries_the_env_file_and_wires_the_database(project: Path) -> None:
    lock = f"postgresql://app:{PASSWORD}@127.0.0.1:55432/app"
    args = ["app.main:app", "--name", "fullstack", *STEPS, "--prestart-lock", lock, "--release", "r1"]
    result = corral("export", "compose", *args, "--env-file", ".env", "--out", ".", cwd=project)
    assert result.returncode == 0, result.stderr
    validate(project / "compose.yaml")
    text = (project / "compose.yaml").read_text()
    assert PASSWORD not in text and "first-Pa55" not in text and "127.0.0.1:55432" not in text
    document: dict[str, Any] = yaml.safe_load(text)
    assert references(document) == []
    services = document["services"]
    for name in ("app", "prestart"):
        service = services[name]
        assert service["env_file"] == [".env"], "every variable of the env file, the Compose way"
        # The app's database on this machine is the `postgres` service here, its password interpolated.
        assert service["environment"]["DATABASE_URL"] == (
            "postgresql+psycopg://app:${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}@postgres:5432/app"
        )
    assert services["postgres"]["environment"]["POSTGRES_USER"] == "app"
    steps = parse_run_arguments(services["prestart"]["command"][1:]).settings
    assert steps.prestart_lock == "postgresql://app@postgres:5432/app"
    assert "--bind" not in services["prestart"]["command"] and "--workers" not in services["prestart"]["command"]
    served = services["app"]["command"]
    assert "--prestart-timeout" not in served and "--acme-directory" not in served and "--env-file" not in served


def test_compose_refuses_other_loopback_values(project: Path) -> None:
    (project / ".env").write_text(LOCAL_ENV + "REDIS_URL=redis://localhost:6379/0\n")
    one_line(
        corral("export", "compose", "app.main:app", "--env-file", ".env", cwd=project),
        "REDIS_URL=redis://localhost:6379/0", "--env-file FILE",
    )  # fmt: skip


def test_kubernetes_configmap_secret_and_envfrom(project: Path) -> None:
    lock = f"postgresql://app:{PASSWORD}@db.prod.svc:5432/app"
    args = ["app.main:app", "--name", "fullstack", *STEPS, "--prestart-lock", lock, "--env-file", ".env.production"]
    args += ["--image", "registry.example/fullstack:1.2", "--memory", "512MiB", "--host", "api.example.com"]
    args += ["--ingress-class", "nginx", "--out", "out"]
    result = corral("export", "kubernetes", *args, cwd=project)
    assert result.returncode == 0, result.stderr
    out = project / "out"
    written = sorted(path.name for path in out.iterdir())
    assert written == ["admin-token.yaml", "app.yaml", "config.yaml", "podmonitor.yaml", "prestart-job.yaml",
                       "secret.yaml"]  # fmt: skip
    kubernetes_validate(*sorted(path for path in out.iterdir() if path.name != "podmonitor.yaml"))
    for path in out.iterdir():
        text = path.read_text()
        assert PASSWORD not in text and "first-Pa55" not in text and "change-me-secret" not in text, path.name

    config = yaml.safe_load((out / "config.yaml").read_text())
    secret = yaml.safe_load((out / "secret.yaml").read_text())
    assert (out / "secret.yaml").stat().st_mode & 0o777 == 0o600
    assert config["kind"] == "ConfigMap" and secret["kind"] == "Secret"
    assert set(config["data"]) == {"FIRST_SUPERUSER", "PROJECT_NAME"}
    assert set(secret["stringData"]) == {"SECRET_KEY", "DATABASE_URL", "FIRST_SUPERUSER_PASSWORD", "PGPASSWORD"}
    assert set(config["data"]) | set(secret["stringData"]) >= keys(CLUSTER_ENV), "every variable reaches the pods"
    assert set(secret["stringData"].values()) == {""}, "keys only unless --secret-values"

    app = [doc for doc in yaml.safe_load_all((out / "app.yaml").read_text()) if doc]
    job = yaml.safe_load((out / "prestart-job.yaml").read_text())
    assert consistency_problems(app, job) == []
    resources = by_kind(app)
    env_from = [{"configMapRef": {"name": "fullstack"}}, {"secretRef": {"name": "fullstack-env"}}]
    container = resources["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    job_container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == env_from and job_container["envFrom"] == env_from

    served = parse_run_arguments(container["args"][1:]).settings
    assert served.release == "1.2" and served.prestart_lock == "postgresql://app@db.prod.svc:5432/app"
    assert served.workers == 2, "CORRAL_WORKERS of the env file is Corral's own setting"
    for option in ("--acme-directory", "--acme-challenges", "--env-file", "--prestart-on-reload", "--https"):
        assert option not in container["args"] and option not in job_container["args"], option
    for option in ("--bind", "--workers", "--admin-bind", "--max-requests"):
        assert option not in job_container["args"], option
    ingress = resources["Ingress"]
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert [rule["host"] for rule in ingress["spec"]["rules"]] == ["api.example.com"]


def test_kubernetes_secret_values_on_request(project: Path) -> None:
    args = ["app.main:app", "--env-file", ".env.production", "--memory", "256MiB", "--secret-values"]
    args += ["--secret-key", "FIRST_SUPERUSER", "--out", "out"]
    result = corral("export", "kubernetes", *args, cwd=project)
    assert result.returncode == 0, result.stderr
    secret = yaml.safe_load((project / "out/secret.yaml").read_text())
    assert secret["stringData"]["SECRET_KEY"] == "change-me-secret"
    assert secret["stringData"]["FIRST_SUPERUSER"] == "admin@example.com", "--secret-key moves a variable"
    assert (project / "out/secret.yaml").stat().st_mode & 0o777 == 0o600
    assert "FIRST_SUPERUSER" not in (project / "out/config.yaml").read_text()


def test_no_prestart_or_acme_options_where_they_do_nothing(project: Path) -> None:
    (project / "corral.toml").write_text('prestart-timeout = 600\nprestart-on-reload = false\nacme-email = "a@b.c"\n')
    for command, extra in (("kubernetes", ["--memory", "256MiB"]), ("compose", [])):
        result = corral("export", command, "app.main:app", *extra, "--out", "out", cwd=project)
        assert result.returncode == 0, result.stderr
        text = "".join(path.read_text() for path in (project / "out").iterdir())
        for option in ("--prestart-timeout", "--no-prestart-on-reload", "--acme-email", "--acme-directory"):
            assert option not in text, (command, option)


@pytest.mark.parametrize("command", ["docker", "compose", "kubernetes"])
def test_loopback_lock_or_value_is_refused(project: Path, command: str) -> None:
    extra = ["--memory", "256MiB"] if command == "kubernetes" else []
    if command != "compose":  # Compose runs a local database as its `postgres` service instead
        lock = f"postgresql://app:{PASSWORD}@127.0.0.1:55432/app"
        one_line(
            corral("export", command, "app.main:app", "--prestart", "true", "--prestart-lock", lock, *extra,
                   cwd=project),
            "--prestart-lock postgresql://app@127.0.0.1:55432/app", "127.0.0.1", "--prestart-lock URL",
        )  # fmt: skip
        one_line(
            corral("export", command, "app.main:app", "--env-file", ".env", *extra, cwd=project),
            "DATABASE_URL=postgresql+psycopg://app:***@127.0.0.1:55432/app", "--env-file FILE",
        )  # fmt: skip
    (project / "other.env").write_text("CACHE_HOST=[::1]:11211\n")
    one_line(
        corral("export", command, "app.main:app", "--env-file", "other.env", *extra, cwd=project),
        "CACHE_HOST=[::1]:11211", "::1",
    )  # fmt: skip


@pytest.mark.parametrize("command", ["docker", "compose", "kubernetes"])
def test_loopback_only_browsers_use_is_a_warning(project: Path, command: str) -> None:
    """A CORS origin on localhost is not something the container connects to: exported, with a warning naming
    the key; a cache URL on loopback is still refused."""
    extra = ["--memory", "256MiB"] if command == "kubernetes" else []
    (project / "front.env").write_text("FRONTEND_HOST=http://localhost:5173\nAPP_NAME=shop\n")
    result = corral("export", command, "app.main:app", "--env-file", "front.env", *extra, "--out", "out", cwd=project)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "FRONTEND_HOST" in warnings[0] and "localhost" in warnings[0], result.stderr
    (project / "cache.env").write_text("FRONTEND_HOST=http://localhost:5173\nREDIS_URL=redis://localhost:6379/0\n")
    one_line(
        corral("export", command, "app.main:app", "--env-file", "cache.env", *extra, cwd=project),
        "REDIS_URL=redis://localhost:6379/0", "localhost",
    )  # fmt: skip
