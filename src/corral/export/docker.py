"""`corral export docker`: a multi-stage Dockerfile running `corral run`, and a .dockerignore.

The build stage installs the dependencies into /opt/venv in a layer of their own (it changes only
with requirements.txt or pyproject.toml), then the code; the final stage is the slim image with
that venv, the code owned by root and read-only to the app, and a numeric non-root USER.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from corral import __version__
from corral.config import run_arguments
from corral.errors import ConfigError
from corral.export.common import (
    CONTAINER_STATE_DIR,
    CONTAINER_TOKEN,
    CONTAINER_UID,
    CONTAINER_WORKDIR,
    ContainerPlan,
    ExportFile,
    refuse_loopback,
    warn_loopback,
)
from corral.export.metrics import token_files, token_source
from corral.export.project import choose_python, find_lock, project_table, read_pins, requirement_names
from corral.export.wheel import wheel_bytes, wheel_name

VENV = "/opt/venv"
CONSTRAINTS = "constraints.txt"
HEALTH_START_PERIOD = 120  # seconds for the first generation to import the app
DOCKERIGNORE = """\
# Written by corral export docker: what stays out of the build context (patterns start at its root).
.git
**/.git
.venv
**/.venv
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
.env.*
*.env
**/.env
**/.env.*
**/*.env
admin-token
**/admin-token
**/admin-token.yaml
**/secret.yaml
"""


@dataclass(frozen=True)
class DockerOptions:
    project: Path
    base_image: str | None = None  # the final stage; default python:X.Y-slim from requires-python
    build_image: str | None = None  # the build stage; default python:X.Y (with compilers)
    out: Path | None = None  # where the files go (the wheel and constraints need it in the build context)


def default_images(version: str | None = None) -> tuple[str, str]:
    """The official images of Python `version` (default: the one running the export): (final, build)."""
    version = version or f"{sys.version_info.major}.{sys.version_info.minor}"
    return f"python:{version}-slim", f"python:{version}"


def health_command(url: str) -> list[str]:
    """An exec-form health check: the slim image has Python but no curl or wget."""
    code = f"import urllib.request; urllib.request.urlopen({url!r}, timeout=4)"
    return ["python", "-c", code]


def render(plan: ContainerPlan, options: DockerOptions) -> list[ExportFile]:
    refuse_loopback(plan.settings, plan.environment, "docker")
    warn_loopback(plan.environment, "docker")
    settings = plan.settings
    project = options.project.resolve()
    context = _context_prefix(project, options.out)
    try:
        version, why = choose_python(project)
    except ConfigError:
        if not (options.base_image and options.build_image):
            raise
        version, why = "of the images given", "--base-image and --build-image"
    final, build = default_images(version)
    install = _dependency_steps(project, context)
    files: list[ExportFile] = []
    notes = [*plan.notes, f"Python {version}: {why}", *install.notes]
    private = [file for file in plan.shipped if file.private]
    notes += [f"{file.path} ({file.flag}) belongs to uid {CONTAINER_UID} in the image: others may not read it"
              for file in private]  # fmt: skip
    mount = ""
    if plan.token_mounted:
        files += token_files(options.out, plan.token_file, notes)
        mount = f' -v "{token_source(options.out, plan.token_file)}:{CONTAINER_TOKEN}:ro"'
    dockerfile = "" if context == "." else f"-f {context}/Dockerfile "
    env_hint = "".join(f" --env-file {_shown(path, project)}" for path in plan.environment.files)
    env_hint += "".join(f" -e {key}" for key in plan.secret_options)
    lines = [
        "# Written by corral export docker.",
        f"#   docker build -t IMAGE {dockerfile}.",
        f"#   podman build --format docker -t IMAGE {dockerfile}.  (an OCI image would drop the HEALTHCHECK)",
        "#   (another base: --build-arg BASE_IMAGE=... --build-arg BUILD_IMAGE=..., the same Python)",
        f"#   docker run --stop-timeout {stop_timeout(plan)} -v corral-state:{CONTAINER_STATE_DIR} "
        + " ".join(f"-p {port}:{port}" for port in plan.ports)
        + env_hint
        + mount
        + " IMAGE",
        *(f"# Note: {note}." for note in notes),
        f"ARG BUILD_IMAGE={options.build_image or build}",
        f"ARG BASE_IMAGE={options.base_image or final}",
        "",
        "FROM ${BUILD_IMAGE} AS build",
        "ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1",
        f"RUN python3 -m venv {VENV}",
        f'ENV PATH="{VENV}/bin:$PATH"',
        f"WORKDIR {CONTAINER_WORKDIR}",
        *install.steps,
        "COPY . .",
    ]
    files += install.files
    if _installable(project):
        lines.append("RUN pip install --no-cache-dir --no-deps .")
    ports = " ".join(str(port) for port in [*plan.ports, plan.admin_port])
    health = json.dumps(health_command(plan.health_url))
    lines += [
        "",
        "FROM ${BASE_IMAGE}",
        f'ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PATH="{VENV}/bin:$PATH"',
        f"RUN useradd --uid {CONTAINER_UID} --user-group --no-create-home --home-dir /tmp"
        f" --shell /usr/sbin/nologin corral \\\n"
        f"    && mkdir -p {CONTAINER_STATE_DIR}"
        f" && chown {CONTAINER_UID}:{CONTAINER_UID} {CONTAINER_STATE_DIR}",
        f"COPY --from=build {VENV} {VENV}",
        f"WORKDIR {CONTAINER_WORKDIR}",
        f"COPY --from=build {CONTAINER_WORKDIR} {CONTAINER_WORKDIR}",
        *(f"COPY --from=build --chown={CONTAINER_UID}:{CONTAINER_UID} {CONTAINER_WORKDIR}/{file.path}"
          f" {CONTAINER_WORKDIR}/{file.path}" for file in private),
        f"USER {CONTAINER_UID}:{CONTAINER_UID}",
        f"EXPOSE {ports}",
        "STOPSIGNAL SIGTERM",
        f"HEALTHCHECK --interval=10s --timeout=5s --start-period={HEALTH_START_PERIOD}s --retries=3"
        f" CMD {health}",
        'ENTRYPOINT ["corral"]',
        f"CMD {json.dumps(['run', *run_arguments(settings)])}",
    ]
    ours = DOCKERIGNORE.splitlines() + [_shown(path, project) for path in plan.environment.files]
    ours += _virtual_environments(project)
    ours += [f"!{file.path}" for file in plan.shipped]  # named by the command: in the image whatever else is left out
    ours += [f"!{context}/{file.name}" for file in install.files] if context != "." else []
    return [
        ExportFile("Dockerfile", "\n".join(lines) + "\n"),
        ExportFile(ignore_file_name(context), merged_ignore(project, ours)),
        *files,
    ]


def ignore_file_name(context: str) -> str:
    """The context's own `.dockerignore` when the Dockerfile is at its root; else `Dockerfile.dockerignore`
    beside the Dockerfile, which BuildKit and podman read for `-f DIR/Dockerfile` instead of the root's."""
    return ".dockerignore" if context == "." else "Dockerfile.dockerignore"


def merged_ignore(project: Path, rules: list[str]) -> str:
    """The project's own `.dockerignore` kept as it is, followed by the rules it lacks: a Dockerfile's own
    ignore file replaces the root's, and the root's is the user's, never overwritten."""
    try:
        existing = (project / ".dockerignore").read_text()
    except FileNotFoundError:
        existing = ""
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {project / '.dockerignore'}: {getattr(exc, 'strerror', None) or exc}") from None
    present = {line.strip() for line in existing.splitlines()}
    missing = [rule for rule in rules if rule.strip() not in present or rule.startswith("#")]
    if not existing:
        return "\n".join(missing) + "\n"
    if not [rule for rule in missing if not rule.startswith("#")]:
        return existing
    added = [rule for rule in missing if not rule.startswith("#")]
    return existing.rstrip("\n") + "\n# Added by corral export docker:\n" + "\n".join(added) + "\n"


def _virtual_environments(project: Path) -> list[str]:
    """Top-level directories of the project that are virtual environments, whatever their name."""
    try:
        return sorted(entry.name for entry in project.iterdir() if (entry / "pyvenv.cfg").is_file())
    except OSError:
        return []


@dataclass(frozen=True)
class Install:
    steps: list[str]
    files: list[ExportFile]  # into the build context beside the Dockerfile: Corral's wheel, the constraints
    notes: list[str]


def _context_prefix(project: Path, out: Path | None) -> str:
    """Where the export's files sit in the build context (the project), as COPY sources name them."""
    if out is None:
        return "."
    try:
        relative = out.resolve().relative_to(project)
    except ValueError:
        raise ConfigError(
            f"--out {out} is outside the project {project}, the build context that must hold the files"
        ) from None
    return relative.as_posix() or "."


def _shown(path: Path, project: Path) -> str:
    """`path` relative to the project where it is inside it or a parent of it."""
    relative = os.path.relpath(path, project)
    return relative if not relative.startswith("../../../") else str(path)


def stop_timeout(plan: ContainerPlan) -> int:
    """Seconds Docker should wait after SIGTERM: the drain delay, the graceful timeout, a margin."""
    return math.ceil(plan.settings.drain_delay + plan.settings.graceful_timeout + 10)


def _dependency_steps(project: Path, context: str) -> Install:
    """Install Corral and the dependencies (pinned by the lock file if there is one) before the code."""
    requirements = project / "requirements.txt"
    table = project_table(project / "pyproject.toml")
    notes: list[str] = []
    files: list[ExportFile] = []
    constraint = ""
    if requirements.is_file():
        names = requirement_names(requirements.read_text().splitlines())
        steps = ["COPY requirements.txt ./"]
        install = "pip install --no-cache-dir{constraint} -r requirements.txt"
    elif table is not None:
        dependencies = table.get("dependencies", [])
        listed = dependencies if isinstance(dependencies, list) else []
        names = requirement_names([str(item) for item in listed])
        read = (
            "import tomllib; "
            'print("\\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"].get("dependencies", [])))'
        )
        steps = ["COPY pyproject.toml ./"]
        install = (
            f"python -c '{read}' > /tmp/requirements.txt \\\n"
            "    && pip install --no-cache-dir{constraint} -r /tmp/requirements.txt"
        )
    else:
        raise ConfigError(
            f"no requirements.txt or pyproject.toml with a [project] table in {project}: "
            "the image needs one of them to install the dependencies"
        )
    own = "corral" not in names
    lock = find_lock(project)
    if lock is not None and lock != requirements:
        pins = read_pins(lock, {"corral"} if own else set())
        files.append(ExportFile(CONSTRAINTS, "".join(f"{line}\n" for line in pins.lines)))
        steps.insert(0, f"COPY {context}/{CONSTRAINTS} /tmp/")
        constraint = f" -c /tmp/{CONSTRAINTS}"
        notes.append(f"versions pinned by {_shown(lock, project)} ({len(pins.lines)} locked)")
    elif lock == requirements:
        notes.append(f"versions from {_shown(lock, project)}")
    else:
        notes.append("no lock file (uv.lock, poetry.lock, pdm.lock, requirements*.txt) found: latest versions")
    steps.append("RUN " + install.format(constraint=constraint))
    if own:
        # This Corral, as a wheel in the build context: no index needs to have its version.
        at = 1 if constraint else 0  # after the constraints' COPY
        steps[at:at] = [
            f"COPY {context}/{wheel_name()} /tmp/",
            f"RUN pip install --no-cache-dir{constraint} /tmp/{wheel_name()}",
        ]
        files.append(ExportFile(wheel_name(), "", data=wheel_bytes()))
        notes.append(f"Corral {__version__} installs from {wheel_name()}, written beside the Dockerfile")
    return Install(steps, files, notes)


def _installable(project: Path) -> bool:
    """A pyproject.toml with a build system is a package to install; otherwise the code runs from /app."""
    pyproject = project / "pyproject.toml"
    if project_table(pyproject) is None:
        return False
    return "build-system" in tomllib.loads(pyproject.read_text())
