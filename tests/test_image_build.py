"""The image of `corral export docker`, built and run for real with Debian's podman (issue 10, obs. 3-5).

The base image is made here from Debian's packages (mmdebstrap, python3 + python3-venv) and
substituted with the Dockerfile's build arguments, as a user would substitute theirs. It differs
from Debian's only by this machine's CA bundle and a pip.conf naming it, so that pip inside the
build trusts what pip on this machine trusts. The tarball and the container storage are cached
in ~/.cache/corral-tests across runs (making the tarball takes 30 s to a few minutes), and so are
the wheels pip installs in the build (a wheelhouse the build mounts and reads without an index).

podman runs with runc and cgroupfs (crun fails on this machine's hybrid cgroups), builds with the
host's network (pip reaches PyPI), and runs the container in a network namespace this test creates
with only a loopback interface, so its 0.0.0.0 listeners are reachable from here and nowhere else.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from corral import __version__
from harness import CORRAL, wait_for

CACHE = Path(os.environ.get("CORRAL_TEST_CACHE", Path.home() / ".cache/corral-tests"))
TARBALL = CACHE / "bookworm-python3.tar"
BASE = "localhost/corral-test-base:bookworm"
TRUSTED = "localhost/corral-test-base:trusted"
RUNROOT = "/run/corral-tests/containers"
CONTAINERS_CONF = """\
[containers]
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
"""
APP = """\
import os

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = f"hello {os.environ.get('GREETING', '?')}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
"""
# At the repository root, one level above the project, as in the report; h11 (uvicorn's) pinned old.
UV_LOCK = """\
version = 1
requires-python = ">=3.11"

[[package]]
name = "h11"
version = "0.14.0"
source = { registry = "https://pypi.org/simple" }

[[package]]
name = "hello"
version = "1.0"
source = { editable = "backend" }
"""


@dataclass(frozen=True)
class Podman:
    command: list[str]
    env: dict[str, str]

    def __call__(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*self.command, *args], capture_output=True, text=True, timeout=timeout, env=self.env, check=False
        )
        if check:
            assert result.returncode == 0, f"podman {' '.join(args[:2])}: {result.stderr[-3000:]}"
        return result


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "builds images as root (podman, mmdebstrap, network namespaces)"
    for tool in ("podman", "runc", "mmdebstrap", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/apt-packages.txt)"
    return None


@pytest.fixture(scope="session")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("podman")
    (work / "containers.conf").write_text(CONTAINERS_CONF)
    env = {**os.environ, "CONTAINERS_CONF": str(work / "containers.conf")}
    engine = Podman(
        # The run root is tied to the storage (podman checks): a fixed path beside it, on /run's tmpfs.
        ["podman", "--root", str(CACHE / "storage"), "--runroot", RUNROOT, "--cgroup-manager", "cgroupfs"],
        env,
    )
    CACHE.mkdir(parents=True, exist_ok=True)
    if engine("image", "exists", TRUSTED, check=False).returncode != 0:
        if engine("image", "exists", BASE, check=False).returncode != 0:
            if not TARBALL.exists():
                partial = TARBALL.with_suffix(".partial.tar")
                subprocess.run(
                    ["mmdebstrap", "--quiet", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
                     "bookworm", str(partial)],
                    check=True, timeout=1200, capture_output=True,
                )  # fmt: skip
                partial.rename(TARBALL)
            engine("import", str(TARBALL), BASE, timeout=600)
        context = work / "base"
        context.mkdir()
        shutil.copy("/etc/ssl/certs/ca-certificates.crt", context / "ca.crt")
        (context / "Containerfile").write_text(
            f"FROM {BASE}\nCOPY ca.crt /etc/ssl/certs/ca-certificates.crt\n"
            'RUN printf "[global]\\ncert = /etc/ssl/certs/ca-certificates.crt\\n" > /etc/pip.conf\n'
        )
        engine("build", "-q", "-t", TRUSTED, str(context), timeout=600)
    yield engine
    engine("image", "prune", "-f", check=False, timeout=300)  # the layers of this session's builds


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"corral-image-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True, timeout=30)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)


def in_netns(netns: str, url: str) -> str:
    """GET `url` from inside the namespace (where the container listens), the body or an OSError."""
    result = subprocess.run(
        ["ip", "netns", "exec", netns, "curl", "-sS", "--max-time", "5", "--fail", url],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise OSError(result.stderr.strip())
    return result.stdout


def wheelhouse(*requirements: str) -> Path:
    """A directory of the wheels the build installs, kept across runs: pip in the build reads it instead of
    downloading the same 20 MiB every time. Filled here, from PyPI, only with what it lacks."""
    wheels = CACHE / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    for stale in wheels.glob("corral-*.whl"):  # pip would take a cached wheel of ours, and its old requirements
        stale.unlink()
    pip = [sys.executable, "-m", "pip", "download", "-q", "--dest", str(wheels), "--only-binary", ":all:"]
    offline = subprocess.run([*pip, "--no-index", "--find-links", str(wheels), *requirements],
                             capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    if offline.returncode != 0:
        online = subprocess.run([*pip, *requirements], capture_output=True, text=True, timeout=900, check=False)
        assert online.returncode == 0, online.stderr[-3000:]
    return wheels


@pytest.mark.timeout(1800)
def test_exported_image_builds_and_serves(podman: Podman, netns: str, tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    project = repository / "backend"
    project.mkdir(parents=True)
    (repository / ".git").mkdir()
    (repository / "uv.lock").write_text(UV_LOCK)
    (project / "pyproject.toml").write_text(
        '[project]\nname = "hello"\nversion = "1.0"\nrequires-python = ">=3.11"\ndependencies = ["h11"]\n'
    )
    (project / "app.py").write_text(APP)
    (project / ".env").write_text("GREETING=from-the-env-file\n")

    args = ["app:app", "-b", "127.0.0.1:8000", "--admin-bind", "127.0.0.1:9000", "-w", "2", "--env-file", ".env"]
    exported = subprocess.run(
        [CORRAL, "export", "docker", *args, "--out", "."], cwd=project, capture_output=True, text=True, timeout=120
    )
    assert exported.returncode == 0, exported.stderr
    dockerfile = (project / "Dockerfile").read_text()
    assert "versions pinned by ../uv.lock" in dockerfile, "the lock file one level up was found and named"
    assert "Python 3.11" in dockerfile

    tag = f"localhost/corral-image-test:{uuid.uuid4().hex[:8]}"
    images = ["--build-arg", f"BASE_IMAGE={TRUSTED}", "--build-arg", f"BUILD_IMAGE={TRUSTED}"]
    wheels = wheelhouse(project / f"corral-{__version__}-py3-none-any.whl", "h11==0.14.0")
    (tmp_path / "pip.conf").write_text(
        "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\nno-index = true\nfind-links = /wheels\n"
    )
    mounts = ["-v", f"{wheels}:/wheels:ro", "-v", f"{tmp_path / 'pip.conf'}:/etc/pip.conf:ro"]
    podman("build", "--network", "host", *images, *mounts, "-t", tag, str(project), timeout=1500)
    container = f"corral-image-test-{uuid.uuid4().hex[:8]}"
    try:
        # The app's configuration comes from the env file at run time; the image does not hold it.
        listing = podman("run", "--rm", "--network", "none", "--entrypoint", "ls", tag, "-A", "/app").stdout.split()
        assert ".env" not in listing and "app.py" in listing
        version = "import h11; print(h11.__version__)"
        pinned = podman("run", "--rm", "--network", "none", "--entrypoint", "python", tag, "-c", version)
        assert pinned.stdout.strip() == "0.14.0", "installed at the version uv.lock pins"

        podman("run", "-d", "--name", container, "--network", f"ns:/run/netns/{netns}", "--env-file",
               str(project / ".env"), tag)  # fmt: skip
        body = wait_for(lambda: in_netns(netns, "http://127.0.0.1:8000/"), timeout=120, what="the app")
        assert body == "hello from-the-env-file"
        livez = in_netns(netns, "http://127.0.0.1:9000/livez")
        assert '"ok": true' in livez
    finally:
        podman("rm", "-f", "-t", "5", container, check=False, timeout=120)
        podman("rmi", "-f", tag, check=False, timeout=120)
