"""WSGI apps exported with `corral export docker`, built with podman and served from the image: a Django project
(the admin, WhiteNoise's static files) and a Flask app whose streamed response arrives in chunks."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest

from corral import __version__
from harness import CORRAL, wait_for
from test_image_build import TRUSTED, Podman, in_netns, netns, podman, printed_command, wheelhouse

__all__ = ["netns", "podman"]  # the fixtures, used by name

SETTINGS = """
DEBUG = False
ALLOWED_HOSTS = ["*"]
MIDDLEWARE.insert(1, "whitenoise.middleware.WhiteNoiseMiddleware")
STATIC_ROOT = BASE_DIR / "collected"
"""

FLASK = """
    import threading
    from flask import Flask, Response

    app = Flask(__name__)
    go = threading.Event()

    @app.get("/")
    def hello():
        return "hello from flask"

    @app.get("/stream")
    def stream():
        def chunks():
            yield "chunk 1\\n"
            go.wait(60)  # until /go, which another thread of this worker serves
            yield "chunk 2\\n"
        return Response(chunks(), mimetype="text/plain")

    @app.get("/go")
    def release():
        go.set()
        return "released"
"""

# Run in the container's network namespace: the first chunk arrives while the second does not exist yet.
STREAM_CLIENT = """
import socket, urllib.request
sock = socket.create_connection(("127.0.0.1", 8000), timeout=60)
sock.sendall(b"GET /stream HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
received = b""
while b"chunk 1" not in received:
    data = sock.recv(4096)
    assert data, received
    received += data
assert b"chunk 2" not in received, received
print("first chunk alone", flush=True)
urllib.request.urlopen("http://127.0.0.1:8000/go", timeout=60).read()
while data := sock.recv(4096):
    received += data
print(received.decode())
"""


@contextlib.contextmanager
def exported_container(
    podman: Podman, netns: str, project: Path, name: str, args: list[str], requirements: list[str], ready: str
) -> Iterator[str]:
    """`corral export docker ARGS` in `project`, built with podman on the trusted base image (pip reads the shared
    wheelhouse, no index) and run in `netns`; yields the container's name once the app answers `ready`. The
    requirements are distribution names, installed at this interpreter's versions."""
    (project / "requirements.txt").write_text("".join(f"{requirement}\n" for requirement in requirements))
    exported = subprocess.run([CORRAL, "export", "docker", *args, "--out", "."], cwd=project,
                              capture_output=True, text=True, timeout=120)
    assert exported.returncode == 0, exported.stderr
    dockerfile = (project / "Dockerfile").read_text()
    wheels = wheelhouse(str(project / f"corral-{__version__}-py3-none-any.whl"),
                        *(f"{requirement}=={version(requirement)}" for requirement in requirements))
    pip_conf = project.parent / f"{name}-pip.conf"
    pip_conf.write_text("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\nno-index = true\nfind-links = /wheels\n")
    mounts = ["-v", f"{wheels}:/wheels:ro", "-v", f"{pip_conf}:/etc/pip.conf:ro"]
    images = ["--build-arg", f"BASE_IMAGE={TRUSTED}", "--build-arg", f"BUILD_IMAGE={TRUSTED}"]
    tag = f"localhost/corral-{name}-test:{uuid.uuid4().hex[:8]}"
    build = [tag if word == "IMAGE" else word for word in printed_command(dockerfile, "podman build")[2:]]
    podman("build", "--network", "host", *images, *mounts, *build, cwd=project, timeout=1500)
    container = f"corral-{name}-test-{uuid.uuid4().hex[:8]}"
    try:
        run = printed_command(dockerfile, "docker run")
        token = next(word for word in run if word.endswith(":/run/secrets/corral-admin-token:ro"))
        podman("run", "-d", "--name", container, "--network", f"ns:/run/netns/{netns}",
               "-v", token.replace("$PWD", str(project)), tag)
        try:
            wait_for(lambda: in_netns(netns, f"http://127.0.0.1:8000{ready}"), timeout=120, what=f"{ready}'s answer")
        except AssertionError as exc:
            logs = podman("logs", container, check=False)
            raise AssertionError(f"{exc}\n{logs.stdout}{logs.stderr}") from None
        yield container
    finally:
        podman("rm", "-f", "-t", "5", container, check=False, timeout=120)
        podman("rmi", "-f", tag, check=False, timeout=120)


def container_log(podman: Podman, container: str) -> str:
    logs = podman("logs", container)
    return logs.stderr + logs.stdout


@pytest.mark.timeout(1800)
def test_django_image_builds_and_serves(podman: Podman, netns: str, tmp_path: Path) -> None:
    project = tmp_path / "site"
    project.mkdir()
    admin = Path(sys.executable).with_name("django-admin")
    subprocess.run([str(admin), "startproject", "mysite", str(project)], check=True)
    with (project / "mysite" / "settings.py").open("a") as settings:
        settings.write(SETTINGS)
    subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput"], cwd=project, check=True,
                   capture_output=True)  # a build step: the image carries the collected files
    args = ["mysite.wsgi:application", "-b", "0.0.0.0:8000", "-w", "2", "--threads", "4"]
    requirements = ["django", "whitenoise"]
    with exported_container(podman, netns, project, "django", args, requirements, "/admin/login/") as container:
        page = in_netns(netns, "http://127.0.0.1:8000/admin/login/")
        assert "Django administration" in page
        css = in_netns(netns, "http://127.0.0.1:8000/static/admin/css/base.css")
        assert "body" in css  # served by WhiteNoise from the image's collected files
        logs = container_log(podman, container)
        assert "mysite.wsgi:application is a WSGI app: each worker runs it in 4 threads" in logs, logs


@pytest.mark.timeout(1800)
def test_flask_image_builds_and_streams(podman: Podman, netns: str, tmp_path: Path) -> None:
    project = tmp_path / "flaskapp"
    project.mkdir()
    (project / "app.py").write_text(textwrap.dedent(FLASK))
    args = ["app:app", "-b", "0.0.0.0:8000", "-w", "1", "--threads", "4"]
    with exported_container(podman, netns, project, "flask", args, ["flask"], "/") as container:
        assert in_netns(netns, "http://127.0.0.1:8000/") == "hello from flask"
        streamed = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", STREAM_CLIENT],
                                  capture_output=True, text=True, timeout=120, check=False)
        assert streamed.returncode == 0, streamed.stderr
        assert streamed.stdout.startswith("first chunk alone\n"), streamed.stdout
        assert "chunk 1\n" in streamed.stdout and "chunk 2\n" in streamed.stdout, streamed.stdout
        assert "transfer-encoding: chunked" in streamed.stdout.lower(), streamed.stdout
        logs = container_log(podman, container)
        assert "app:app is a WSGI app: each worker runs it in 4 threads" in logs, logs
