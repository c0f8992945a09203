"""`corral export ... --log-config`: the artefact can use the file where it runs, or the export refuses in one line.

The image holds the project with each file's mode and root as its owner, and its user (uid 10001) may write only
in the state directory and /tmp; a systemd service sees a read-only file system but for ReadWritePaths.
`test_image_build.py` builds and runs such an image with podman."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from harness import CORRAL
from test_export_docker import hadolint
from test_export_systemd import verify

CONTAINERS = ["docker", "compose", "kubernetes"]


def corral(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # As root a systemd service runs as the sudo caller: one this host does not have, which the export cannot check.
    env = {**os.environ, "SUDO_USER": "corral-test-service"}
    return subprocess.run([CORRAL, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False, env=env)


def export(kind: str, project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    extra = ["--memory", "256Mi"] if kind == "kubernetes" else []  # no measuring import of the app
    return corral("export", kind, "main:app", *extra, *args, cwd=project)


def log_config(filename: str | None = None) -> str:
    handler: dict[str, str] = {"class": "logging.StreamHandler"}
    if filename is not None:
        handler = {"class": "logging.handlers.RotatingFileHandler", "filename": filename}
    return json.dumps({"version": 1, "handlers": {"out": handler}, "loggers": {"corral.access": {"handlers": ["out"]}}})


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "main.py").write_text("async def app(scope, receive, send):\n    pass\n")
    (tmp_path / "requirements.txt").write_text("starlette\n")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf/logging.json").write_text(log_config())
    return tmp_path


def test_a_log_config_others_cannot_read_is_given_to_the_containers_user(project: Path) -> None:
    """Mode 0600: the image gives the file to its user (mode kept), and names it in the Dockerfile's notes; the
    ignore file keeps it in the build context whatever the user's own rules leave out."""
    (project / "conf/logging.json").chmod(0o600)
    (project / ".dockerignore").write_text("conf\n")
    result = export("docker", project, "--log-config", str(project / "conf/logging.json"), "--out", "deploy")
    assert result.returncode == 0, result.stderr
    hadolint(project / "deploy/Dockerfile")
    dockerfile = (project / "deploy/Dockerfile").read_text()
    lines = dockerfile.splitlines()
    chown = "COPY --from=build --chown=10001:10001 /app/conf/logging.json /app/conf/logging.json"
    assert lines.index(chown) == lines.index("COPY --from=build /app /app") + 1, dockerfile
    assert lines.index(chown) < lines.index("USER 10001:10001")
    assert "# Note: conf/logging.json (--log-config) belongs to uid 10001 in the image" in dockerfile
    assert '"--log-config", "conf/logging.json"]' in dockerfile
    rules = (project / "deploy/Dockerfile.dockerignore").read_text().splitlines()
    assert rules.index("!conf/logging.json") > rules.index("conf"), "a later exception wins"


def test_a_log_config_everyone_reads_stays_roots(project: Path) -> None:
    result = export("docker", project, "--log-config", "conf/logging.json")
    assert result.returncode == 0, result.stderr
    assert "--chown" not in result.stdout and "belongs to uid" not in result.stdout
    assert '"--log-config", "conf/logging.json"]' in result.stdout


@pytest.mark.parametrize("kind", CONTAINERS)
@pytest.mark.parametrize("where", ["logs/access.log", "access.log", "HOST", "/var/log/app/access.log"])
def test_a_log_file_the_container_cannot_write_is_refused(project: Path, kind: str, where: str) -> None:
    filename = str(project / "access.log") if where == "HOST" else where
    (project / "conf/logging.json").write_text(log_config(filename))
    result = export(kind, project, "--log-config", "conf/logging.json")
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"corral: --log-config conf/logging.json: handler 'out' writes to {filename}, but the container can write "
        "files only directly in /var/lib/corral and /tmp: log to a stream (the container's log) or to a file in "
        "/var/lib/corral\n"
    )


@pytest.mark.parametrize("kind", CONTAINERS)
@pytest.mark.parametrize("where", ["/var/lib/corral/access.log", "/tmp/access.log"])
def test_a_log_file_where_the_container_writes_is_kept(project: Path, kind: str, where: str) -> None:
    (project / "conf/logging.json").write_text(log_config(where))
    result = export(kind, project, "--log-config", "conf/logging.json")
    assert result.returncode == 0, result.stderr
    assert "conf/logging.json" in result.stdout


@pytest.mark.parametrize("kind", CONTAINERS)
def test_a_log_config_the_image_cannot_use_is_refused(project: Path, kind: str) -> None:
    (project / "bad.json").write_text("{not json")
    (project / "closed").mkdir(mode=0o700)
    (project / "closed/logging.json").write_text(log_config())
    (project / "closed").chmod(0o700)
    expected = {
        "missing.json": "corral: --log-config missing.json: No such file or directory\n",
        "conf": "corral: --log-config conf: not a regular file\n",
        "bad.json": "corral: --log-config ",  # the parser's reason follows
        "closed/logging.json": f"corral: --log-config closed/logging.json: {project / 'closed'} is mode 700, which "
        "the container's user (uid 10001) cannot enter in the image: allow it (chmod o+x) or move the file\n",
    }
    for value, line in expected.items():
        result = export(kind, project, "--log-config", value)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(line) and result.stderr.count("\n") == 1, result.stderr


def test_systemd_opens_the_directories_of_the_log_files(project: Path, tmp_path: Path) -> None:
    """ProtectSystem=strict makes the file system read-only: the log files' directories are ReadWritePaths."""
    logs = tmp_path / "logs"
    (project / "conf/logging.json").write_text(log_config("conf/../logs/access.log"))  # relative to the unit's
    result = export("systemd", project, "--log-config", "conf/logging.json", "--out", str(tmp_path / "units"))
    assert result.returncode == 0, result.stderr
    verify(tmp_path / "units", "corral.service")
    unit = (tmp_path / "units/corral.service").read_text()
    assert f"ReadWritePaths={logs}\n" in unit and "ProtectSystem=strict\n" in unit
    assert " --log-config conf/logging.json\n" in unit
    (project / "conf/logging.json").write_text(log_config())
    streamed = export("systemd", project, "--log-config", "conf/logging.json")
    assert streamed.returncode == 0, streamed.stderr
    assert "ReadWritePaths" not in streamed.stdout
