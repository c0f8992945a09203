"""`corral export docker`: a multi-stage Dockerfile running `corral run`, and a .dockerignore.

The build stage installs the dependencies into /opt/venv in a layer of their own (it changes only
with requirements.txt or pyproject.toml), then the code; the final stage is the slim image with
that venv, the code owned by root and read-only to the app, and a numeric non-root USER.
"""

from __future__ import annotations

import json
import math
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from corral import __version__
from corral.config import run_arguments
from corral.errors import ConfigError
from corral.export.common import (
    CONTAINER_STATE_DIR,
    CONTAINER_UID,
    CONTAINER_WORKDIR,
    ContainerPlan,
    ExportFile,
)

VENV = "/opt/venv"
HEALTH_START_PERIOD = 120  # seconds for the first generation to import the app
DOCKERIGNORE = """\
# Written by corral export docker: what stays out of the build context.
.git
.venv
venv
**/__pycache__
**/*.pyc
.pytest_cache
.mypy_cache
.ruff_cache
.tox
*.egg-info
build
dist
node_modules
.env
"""


@dataclass(frozen=True)
class DockerOptions:
    project: Path
    base_image: str  # the final stage, e.g. python:3.11-slim
    build_image: str  # the build stage: the same Python with compilers, e.g. python:3.11


def default_images() -> tuple[str, str]:
    """The Python that runs the export, as the official images name it: (final, build)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return f"python:{version}-slim", f"python:{version}"


def health_command(url: str) -> list[str]:
    """An exec-form health check: the slim image has Python but no curl or wget."""
    code = f"import urllib.request; urllib.request.urlopen({url!r}, timeout=4)"
    return ["python", "-c", code]


def render(plan: ContainerPlan, options: DockerOptions) -> list[ExportFile]:
    settings = plan.settings
    lines = [
        "# Written by corral export docker.",
        "#   docker build -t IMAGE .",
        f"#   docker run --stop-timeout {stop_timeout(plan)} -v corral-state:{CONTAINER_STATE_DIR} "
        + " ".join(f"-p {port}:{port}" for port in plan.ports)
        + (" -e PGPASSWORD" if plan.postgres is not None and plan.postgres.password else "")
        + " IMAGE",
        *(f"# Note: {note}." for note in plan.notes),
        f"FROM {options.build_image} AS build",
        "ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1",
        f"RUN python -m venv {VENV}",
        f'ENV PATH="{VENV}/bin:$PATH"',
        f"WORKDIR {CONTAINER_WORKDIR}",
        *_dependency_steps(options.project),
        "COPY . .",
    ]
    if _installable(options.project):
        lines.append("RUN pip install --no-cache-dir --no-deps .")
    ports = " ".join(str(port) for port in [*plan.ports, plan.admin_port])
    health = json.dumps(health_command(plan.health_url))
    lines += [
        "",
        f"FROM {options.base_image}",
        f'ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PATH="{VENV}/bin:$PATH"',
        f"RUN useradd --uid {CONTAINER_UID} --user-group --no-create-home --home-dir /tmp"
        f" --shell /usr/sbin/nologin corral \\\n"
        f"    && mkdir -p {CONTAINER_STATE_DIR}"
        f" && chown {CONTAINER_UID}:{CONTAINER_UID} {CONTAINER_STATE_DIR}",
        f"COPY --from=build {VENV} {VENV}",
        f"WORKDIR {CONTAINER_WORKDIR}",
        f"COPY --from=build {CONTAINER_WORKDIR} {CONTAINER_WORKDIR}",
        f"USER {CONTAINER_UID}:{CONTAINER_UID}",
        f"EXPOSE {ports}",
        "STOPSIGNAL SIGTERM",
        f"HEALTHCHECK --interval=10s --timeout=5s --start-period={HEALTH_START_PERIOD}s --retries=3"
        f" CMD {health}",
        'ENTRYPOINT ["corral"]',
        f"CMD {json.dumps(['run', *run_arguments(settings)])}",
    ]
    return [ExportFile("Dockerfile", "\n".join(lines) + "\n"), ExportFile(".dockerignore", DOCKERIGNORE)]


def stop_timeout(plan: ContainerPlan) -> int:
    """Seconds Docker should wait after SIGTERM: the drain delay, the graceful timeout, a margin."""
    return math.ceil(plan.settings.drain_delay + plan.settings.graceful_timeout + 10)


def _dependency_steps(project: Path) -> list[str]:
    """Install the dependencies (and corral, if they do not include it) before copying the code."""
    requirements = project / "requirements.txt"
    table = _project_table(project / "pyproject.toml")
    if requirements.is_file():
        names = _requirement_names(requirements.read_text().splitlines())
        steps = ["COPY requirements.txt ./", "RUN pip install --no-cache-dir -r requirements.txt"]
    elif table is not None:
        dependencies = table.get("dependencies", [])
        listed = dependencies if isinstance(dependencies, list) else []
        names = _requirement_names([str(item) for item in listed])
        read = (
            "import tomllib; "
            'print("\\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"].get("dependencies", [])))'
        )
        steps = [
            "COPY pyproject.toml ./",
            f"RUN python -c '{read}' > /tmp/requirements.txt \\\n"
            "    && pip install --no-cache-dir -r /tmp/requirements.txt",
        ]
    else:
        raise ConfigError(
            f"no requirements.txt or pyproject.toml with a [project] table in {project}: "
            "the image needs one of them to install the dependencies"
        )
    if "corral" not in names:
        steps.insert(0, f"RUN pip install --no-cache-dir corral=={__version__}")
    return steps


def _project_table(pyproject: Path) -> dict[str, object] | None:
    if not pyproject.is_file():
        return None
    try:
        data = tomllib.loads(pyproject.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{pyproject}: cannot read: {exc}") from None
    table = data.get("project")
    return table if isinstance(table, dict) else None


def _installable(project: Path) -> bool:
    """A pyproject.toml with a build system is a package to install; otherwise the code runs from /app."""
    pyproject = project / "pyproject.toml"
    if _project_table(pyproject) is None:
        return False
    return "build-system" in tomllib.loads(pyproject.read_text())


def _requirement_names(lines: list[str]) -> set[str]:
    names = set()
    for line in lines:
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line)
        if match and not line.lstrip().startswith(("#", "-")):
            names.add(re.sub(r"[-_.]+", "-", match.group(1)).lower())
    return names
