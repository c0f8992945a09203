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

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

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
# --log-config as a user brings it: Corral's lines in a format of its own, the access lines also into a file in
# the state directory (the one place, with /tmp, the container writes). Written mode 0600 and left out by the
# user's .dockerignore: the export must still ship it, readable by the container's user.
LOG_CONFIG = {
    "version": 1,
    "formatters": {"configured": {"format": "CONFIGURED %(name)s %(levelname)s %(message)s"}},
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "formatter": "configured"},
        "file": {"class": "logging.FileHandler", "filename": "/var/lib/corral/access.log", "formatter": "configured"},
    },
    "loggers": {
        "corral": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        "corral.access": {"handlers": ["stderr", "file"], "level": "INFO", "propagate": False},
    },
}
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

    def __call__(
        self, *args: str, timeout: float = 120, check: bool = True, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*self.command, *args], capture_output=True, text=True, timeout=timeout, env=self.env, check=False,
            cwd=cwd,
        )  # fmt: skip
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


def printed_command(dockerfile: str, prefix: str) -> list[str]:
    """The command the Dockerfile's header prints, starting with `prefix` (`podman build`, `docker run`)."""
    line = next(line for line in dockerfile.splitlines() if line.startswith(f"#   {prefix} "))
    return shlex.split(line.removeprefix("#   ").split("  (")[0])


def docs_scrape_config() -> str:
    """The Prometheus scrape configuration docs/deployment.md gives, as written there."""
    text = (Path(__file__).parent.parent / "docs/deployment.md").read_text()
    section = text[text.index("## Metrics scraped with a token"):]
    block = re.search(r"```yaml\n(scrape_configs:.*?)```", section, re.DOTALL)
    assert block, "docs/deployment.md has no scrape configuration"
    return block.group(1)


def image_files(podman: Podman, tag: str) -> list[str]:
    """Every path under /app in the image, relative to it."""
    found = podman("run", "--rm", "--network", "none", "--entrypoint", "find", tag, "/app", "-mindepth", "1").stdout
    return [line.removeprefix("/app/") for line in found.split()]


def scrape_with_prometheus(netns: str, tmp_path: Path, token: str, admin: str) -> dict[str, float]:
    """Run Prometheus in the namespace with the docs' scrape configuration; the sample values it stored."""
    credentials = tmp_path / "prometheus-token"
    credentials.write_text(token + "\n")
    credentials.chmod(0o400)
    config = docs_scrape_config().replace("/etc/prometheus/corral-token", str(credentials))
    config = config.replace("app.example.internal:9000", admin)
    (tmp_path / "prometheus.yml").write_text("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n" + config)
    log = (tmp_path / "prometheus.log").open("w")
    server = subprocess.Popen(
        ["ip", "netns", "exec", netns, "prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}", "--web.listen-address=127.0.0.1:9090"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        def sample(query: str) -> float | None:
            try:
                url = "http://127.0.0.1:9090/api/v1/query?query=" + urllib.parse.quote(query)
                answer = json.loads(in_netns(netns, url))
            except (OSError, ValueError):
                return None
            result = answer["data"]["result"]
            return float(result[0]["value"][1]) if result else None

        def scraped() -> dict[str, float] | None:
            up = sample('up{job="corral"}')
            count = sample('count({job="corral", __name__=~"corral_.+"})')
            return {"up": up, "series": count} if up == 1 and count else None

        found: dict[str, float] = wait_for(scraped, timeout=120, what="Prometheus to scrape /metrics")
        return found
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(60)
        log.close()


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("out", [".", "deploy"])
def test_exported_image_builds_and_serves(podman: Podman, netns: str, tmp_path: Path, out: str) -> None:
    """Built with the command the Dockerfile prints, whatever --out is: nothing secret or local in the image,
    the health check kept, the app served with its env file and logging by its --log-config, and /metrics
    scraped by Prometheus with the exported token."""
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
    # What must stay out: the repository, virtual environments (one not named .venv), env files at any depth,
    # and what the user's own .dockerignore lists (kept as it is).
    # (a .git at the project's root would make it the repository, where the lock file is looked for last)
    (project / "vendor/.git").mkdir(parents=True)
    (project / "vendor/.git/config").write_text("[core]\n")
    for venv in (".venv", "pyenv311"):
        (project / venv).mkdir()
        (project / venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (project / "config").mkdir()
    (project / "config/.env").write_text("GREETING=nested\n")
    (project / "config/production.env").write_text("GREETING=production\n")
    (project / "notes.txt").write_text("private notes\n")
    (project / ".dockerignore").write_text("notes.txt\nconfig/*.json\n")
    (project / "config/logging.json").write_text(json.dumps(LOG_CONFIG))
    (project / "config/logging.json").chmod(0o600)

    args = ["app:app", "-b", "127.0.0.1:8000", "--admin-bind", "127.0.0.1:9000", "-w", "2", "--env-file", ".env",
            "--log-config", str(project / "config/logging.json")]
    exported = subprocess.run(
        [CORRAL, "export", "docker", *args, "--out", out], cwd=project, capture_output=True, text=True, timeout=120
    )
    assert exported.returncode == 0, exported.stderr
    dockerfile = (project / out / "Dockerfile").read_text()
    assert "versions pinned by ../uv.lock" in dockerfile, "the lock file one level up was found and named"
    assert "Python 3.11" in dockerfile
    assert (project / ".dockerignore").read_text().startswith("notes.txt\n"), "the user's file is kept"

    tag = f"localhost/corral-image-test:{uuid.uuid4().hex[:8]}"
    images = ["--build-arg", f"BASE_IMAGE={TRUSTED}", "--build-arg", f"BUILD_IMAGE={TRUSTED}"]
    wheels = wheelhouse(str(project / out / f"corral-{__version__}-py3-none-any.whl"), "h11==0.14.0")
    (tmp_path / "pip.conf").write_text(
        "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\nno-index = true\nfind-links = /wheels\n"
    )
    mounts = ["-v", f"{wheels}:/wheels:ro", "-v", f"{tmp_path / 'pip.conf'}:/etc/pip.conf:ro"]
    build = printed_command(dockerfile, "podman build")
    assert build[:4] == ["podman", "build", "--format", "docker"], "an OCI image would drop the HEALTHCHECK"
    build = [tag if word == "IMAGE" else word for word in build[2:]]
    podman("build", "--network", "host", *images, *mounts, *build, cwd=project, timeout=1500)
    container = f"corral-image-test-{uuid.uuid4().hex[:8]}"
    try:
        files = image_files(podman, tag)
        assert "app.py" in files
        leaked = [path for path in files if Path(path).name in {".env", "production.env", "admin-token", "notes.txt"}
                  or Path(path).parts[0] in {".venv", "pyenv311"} or ".git" in Path(path).parts]  # fmt: skip
        assert leaked == [], leaked
        inspected = json.loads(podman("image", "inspect", tag).stdout)[0]
        health = inspected.get("Healthcheck")  # kept only in the docker format
        assert health and "/livez" in " ".join(health["Test"]), inspected["Config"]
        version = "import h11; print(h11.__version__)"
        pinned = podman("run", "--rm", "--network", "none", "--entrypoint", "python", tag, "-c", version)
        assert pinned.stdout.strip() == "0.14.0", "installed at the version uv.lock pins"

        # Compose builds the same: the project as the context, the Dockerfile of the same --out.
        compose = subprocess.run([CORRAL, "export", "compose", *args, "--out", out], cwd=project,
                                 capture_output=True, text=True, timeout=120)  # fmt: skip
        assert compose.returncode == 0, compose.stderr
        context, compose_dockerfile = build_paths(project / out / "compose.yaml")
        printed = (project / (build[build.index("-f") + 1] if "-f" in build else "Dockerfile")).resolve()
        assert (context, compose_dockerfile.resolve()) == (project.resolve(), printed)
        again = podman("build", "--network", "host", "--format", "docker", *images, *mounts, "-q", "-f",
                       str(compose_dockerfile), str(context), timeout=1500)  # fmt: skip
        compose_tag = again.stdout.strip().splitlines()[-1]
        try:
            assert set(image_files(podman, compose_tag)) - set(files) == {f"{out}/compose.yaml".removeprefix("./")}
        finally:
            podman("rmi", "-f", compose_tag, check=False, timeout=120)

        run = printed_command(dockerfile, "docker run")
        token_mount = next(word for word in run if word.endswith(":/run/secrets/corral-admin-token:ro"))
        token_mount = token_mount.replace("$PWD", str(project))
        token = (project / out / "admin-token").read_text().strip()
        podman("run", "-d", "--name", container, "--network", f"ns:/run/netns/{netns}", "--env-file",
               str(project / ".env"), "-v", token_mount, tag)  # fmt: skip
        body = wait_for(lambda: served(podman, netns, container), timeout=120, what="the app")
        assert body == "hello from-the-env-file"
        livez = in_netns(netns, "http://127.0.0.1:9000/livez")
        assert '"ok": true' in livez
        with pytest.raises(OSError, match="401"):
            in_netns(netns, "http://127.0.0.1:9000/metrics")
        logs = podman("logs", container).stderr + podman("logs", container).stdout
        assert "/metrics, /dashboard: token required" in logs, logs
        assert "CONFIGURED corral INFO worker 1 " in logs, logs  # the manager's and the workers' lines
        assert 'CONFIGURED corral.access INFO 127.0.0.1' in logs and '"GET / HTTP/1.1" 200' in logs, logs
        written = podman("exec", container, "cat", "/var/lib/corral/access.log").stdout
        assert written.startswith("CONFIGURED corral.access INFO ") and "GET /" in written, written
        assert scrape_with_prometheus(netns, tmp_path, token, "127.0.0.1:9000")["up"] == 1
    finally:
        podman("rm", "-f", "-t", "5", container, check=False, timeout=120)
        podman("rmi", "-f", tag, check=False, timeout=120)


def served(podman: Podman, netns: str, container: str) -> str | None:
    """The app's answer; None while it starts; the container's logs in the failure if it ended."""
    try:
        return in_netns(netns, "http://127.0.0.1:8000/")
    except OSError:
        state = podman("inspect", "--format", "{{.State.Status}}", container, check=False).stdout.strip()
        if state in ("exited", "stopped"):
            logs = podman("logs", container, check=False)
            raise AssertionError(f"the container ended: {logs.stdout}{logs.stderr}") from None
        return None


def build_paths(compose: Path) -> tuple[Path, Path]:
    """(context, Dockerfile) of the app's build in a Compose file, resolved as Compose does."""
    build = yaml.safe_load(compose.read_text())["services"]["app"]["build"]
    spec = {"context": build} if isinstance(build, str) else build
    context = (compose.parent / spec["context"]).resolve()
    return context, context / spec.get("dockerfile", "Dockerfile")
