"""A Django project exported with `corral export docker`, built with podman and served as WSGI from the image."""

from __future__ import annotations

import subprocess
import sys
import uuid
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
    (project / "requirements.txt").write_text("django\nwhitenoise\n")
    args = ["mysite.wsgi:application", "-b", "0.0.0.0:8000", "-w", "2", "--threads", "4"]
    exported = subprocess.run([CORRAL, "export", "docker", *args, "--out", "."], cwd=project,
                              capture_output=True, text=True, timeout=120)
    assert exported.returncode == 0, exported.stderr
    dockerfile = (project / "Dockerfile").read_text()
    from importlib.metadata import version

    wheels = wheelhouse(str(project / f"corral-{__version__}-py3-none-any.whl"), f"django=={version('django')}",
                        f"whitenoise=={version('whitenoise')}")
    (tmp_path / "pip.conf").write_text(
        "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\nno-index = true\nfind-links = /wheels\n"
    )
    mounts = ["-v", f"{wheels}:/wheels:ro", "-v", f"{tmp_path / 'pip.conf'}:/etc/pip.conf:ro"]
    images = ["--build-arg", f"BASE_IMAGE={TRUSTED}", "--build-arg", f"BUILD_IMAGE={TRUSTED}"]
    tag = f"localhost/corral-django-test:{uuid.uuid4().hex[:8]}"
    build = [tag if word == "IMAGE" else word for word in printed_command(dockerfile, "podman build")[2:]]
    podman("build", "--network", "host", *images, *mounts, *build, cwd=project, timeout=1500)
    container = f"corral-django-test-{uuid.uuid4().hex[:8]}"
    try:
        run = printed_command(dockerfile, "docker run")
        token = next(word for word in run if word.endswith(":/run/secrets/corral-admin-token:ro"))
        podman("run", "-d", "--name", container, "--network", f"ns:/run/netns/{netns}",
               "-v", token.replace("$PWD", str(project)), tag)
        try:
            page = wait_for(lambda: in_netns(netns, "http://127.0.0.1:8000/admin/login/"), timeout=120,
                            what="the admin login page")
        except AssertionError as exc:
            logs = podman("logs", container, check=False)
            raise AssertionError(f"{exc}\n{logs.stdout}{logs.stderr}") from None
        assert "Django administration" in page
        css = in_netns(netns, "http://127.0.0.1:8000/static/admin/css/base.css")
        assert "body" in css  # served by WhiteNoise from the image's collected files
        logs = podman("logs", container).stderr + podman("logs", container).stdout
        assert "mysite.wsgi:application is a WSGI app: each worker runs it in 4 threads" in logs, logs
    finally:
        podman("rm", "-f", "-t", "5", container, check=False, timeout=120)
        podman("rmi", "-f", tag, check=False, timeout=120)
