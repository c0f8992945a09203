"""What `corral export docker` reads from the project: its Python and its lock file (issue 10, obs. 3, 4, 5).

Building the image for real is tests/test_image_build.py; these check each choice on its own.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from corral import __version__
from harness import CORRAL

UV_LOCK = """\
version = 1
[[package]]
name = "fastapi"
version = "0.115.0"
source = { registry = "https://pypi.org/simple" }

[[package]]
name = "corral"
version = "0.0.9"
source = { registry = "https://pypi.org/simple" }

[[package]]
name = "backend"
version = "1.0"
source = { editable = "backend" }
"""
POETRY_LOCK = """\
[[package]]
name = "starlette"
version = "0.38.2"
description = ""
optional = false

[[package]]
name = "internal-lib"
version = "2.0"
description = ""
optional = false

[package.source]
type = "git"
url = "https://example.invalid/internal-lib.git"
"""


def project(root: Path, requires: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    python = f'requires-python = "{requires}"\n' if requires else ""
    (root / "pyproject.toml").write_text(
        f'[project]\nname = "backend"\nversion = "1.0"\n{python}dependencies = ["fastapi"]\n'
    )
    (root / "main.py").write_text("async def app(scope, receive, send):\n    pass\n")
    return root


def export(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CORRAL, "export", "docker", "main:app", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def args_of(dockerfile: str) -> dict[str, str]:
    return dict(line[4:].split("=", 1) for line in dockerfile.splitlines() if line.startswith("ARG "))


@pytest.mark.parametrize(
    ("requires", "python"),
    [
        (None, f"{sys.version_info.major}.{sys.version_info.minor}"),
        (f">={sys.version_info.major}.{sys.version_info.minor}", f"{sys.version_info.major}.{sys.version_info.minor}"),
        (">=3.13,<3.14", "3.13"),
        (">=3.12,!=3.14.*", "3.13" if sys.version_info < (3, 12) else f"{sys.version_info[0]}.{sys.version_info[1]}"),
    ],
)
def test_python_from_requires_python(tmp_path: Path, requires: str | None, python: str) -> None:
    root = project(tmp_path / "p", requires)
    result = export(root, "--out", ".")
    assert result.returncode == 0, result.stderr
    images = args_of((root / "Dockerfile").read_text())
    # The running Python if it fits, else the newest image that does.
    assert images == {"BUILD_IMAGE": f"python:{python}", "BASE_IMAGE": f"python:{python}-slim"}


def test_no_python_fits_is_one_line(tmp_path: Path) -> None:
    root = project(tmp_path / "p", "<3.10")
    result = export(root)
    assert result.returncode == 2
    assert result.stderr.startswith("corral: requires-python '<3.10' allows none of Python 3.11")
    assert result.stderr.count("\n") == 1
    # A base the user gives is theirs to choose.
    given = export(root, "--base-image", "my/python:3.9-slim", "--build-image", "my/python:3.9", "--out", ".")
    assert given.returncode == 0, given.stderr
    assert args_of((root / "Dockerfile").read_text())["BASE_IMAGE"] == "my/python:3.9-slim"


def test_uv_lock_of_the_repository_root_pins_the_versions(tmp_path: Path) -> None:
    (tmp_path / "repo/.git").mkdir(parents=True)
    (tmp_path / "repo/uv.lock").write_text(UV_LOCK)
    root = project(tmp_path / "repo/backend")
    result = export(root, "--out", ".")
    assert result.returncode == 0, result.stderr
    dockerfile = (root / "Dockerfile").read_text()
    assert "# Note: versions pinned by ../uv.lock (1 locked)." in dockerfile
    # Corral installs from this installation's wheel, so the lock's (published) corral is left out.
    assert (root / "constraints.txt").read_text() == "fastapi==0.115.0\n"
    assert "pip install --no-cache-dir -c /tmp/constraints.txt -r /tmp/requirements.txt" in dockerfile
    wheel = root / f"corral-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert "corral/cli.py" in names and f"corral-{__version__}.dist-info/RECORD" in names
        entry_points = archive.read(f"corral-{__version__}.dist-info/entry_points.txt").decode()
        assert "corral = corral.cli:main" in entry_points
    first = wheel.read_bytes()
    assert export(root, "--out", ".").returncode == 0
    assert wheel.read_bytes() == first, "the same Corral gives the same wheel: the image layer is reused"


def test_poetry_lock_in_the_project_and_the_search_stops_at_the_repository(tmp_path: Path) -> None:
    (tmp_path / "uv.lock").write_text(UV_LOCK)  # above the repository: not this project's
    (tmp_path / "repo/.git").mkdir(parents=True)
    root = project(tmp_path / "repo/backend")
    result = export(root, "--out", ".")
    assert result.returncode == 0, result.stderr
    assert "no lock file (uv.lock, poetry.lock, pdm.lock, requirements*.txt) found" in (root / "Dockerfile").read_text()
    (root / "poetry.lock").write_text(POETRY_LOCK)
    assert export(root, "--out", ".").returncode == 0
    assert (root / "constraints.txt").read_text() == "starlette==0.38.2\n", "git sources are not pins"


def test_env_files_stay_out_of_the_build_context(tmp_path: Path) -> None:
    root = project(tmp_path / "p")
    (root / "prod.vars").write_text("MODE=prod\n")
    result = export(root, "--env-file", "prod.vars", "--out", ".")
    assert result.returncode == 0, result.stderr
    ignored = (root / ".dockerignore").read_text().splitlines()
    assert ".env" in ignored and "prod.vars" in ignored
    assert "--env-file prod.vars" in (root / "Dockerfile").read_text(), "docker run --env-file, in the header"
