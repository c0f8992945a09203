"""A real Django project (made by `django-admin startproject` here) served as WSGI by `corral run`: migrations
as a pre-start step under the PostgreSQL lock, the admin login page, WhiteNoise's static files, apps loaded once
in the template, and reloads that lose no request while a slow view is in flight."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import psycopg

from harness import Corral, run_cli, wait_for

SETTINGS = """

import os
from urllib.parse import urlsplit

DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS += ["notes"]
MIDDLEWARE.insert(1, "whitenoise.middleware.WhiteNoiseMiddleware")
STATIC_ROOT = BASE_DIR / "collected"
_db = urlsplit(os.environ["DATABASE_URL"])
DATABASES = {"default": {
    "ENGINE": "django.db.backends.postgresql", "NAME": _db.path.lstrip("/"), "USER": _db.username or "",
    "PASSWORD": _db.password or "", "HOST": _db.hostname or "", "PORT": str(_db.port or ""),
}}
"""

MODELS = """
from django.db import models


class Note(models.Model):
    text = models.CharField(max_length=100)
"""

APPS = """
import os
import sys

from django.apps import AppConfig


class NotesConfig(AppConfig):
    name = "notes"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        if sys.argv[0].endswith("manage.py"):  # a pre-start step, not a server process
            return
        with open(os.path.join(os.path.dirname(__file__), "..", "ready.log"), "a") as file:
            file.write(f"{os.getpid()}\\n")
"""

VIEWS = """
import time

from django.http import HttpResponse

from notes.models import Note


def add(request):
    Note.objects.create(text="one more")
    return HttpResponse(str(Note.objects.count()))


def hello(request):
    return HttpResponse("hello from django")


def slow(request):
    time.sleep(float(request.GET.get("s", "1")))
    return HttpResponse("slow done")
"""

URLS = """
from django.contrib import admin
from django.urls import path

from notes import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("add/", views.add),
    path("hello/", views.hello),
    path("slow/", views.slow),
]
"""


def django_project(root: Path) -> Path:
    """`django-admin startproject mysite` and `startapp notes` with a model and its migration."""
    root.mkdir()
    admin = Path(sys.executable).with_name("django-admin")
    subprocess.run([str(admin), "startproject", "mysite", str(root)], check=True)
    subprocess.run([sys.executable, "manage.py", "startapp", "notes"], cwd=root, check=True)
    with (root / "mysite" / "settings.py").open("a") as settings:
        settings.write(SETTINGS)
    (root / "notes" / "models.py").write_text(textwrap.dedent(MODELS))
    (root / "notes" / "apps.py").write_text(textwrap.dedent(APPS))
    (root / "notes" / "views.py").write_text(textwrap.dedent(VIEWS))
    (root / "mysite" / "urls.py").write_text(textwrap.dedent(URLS))
    env = {"DATABASE_URL": "postgresql://unused/unused", "PATH": str(Path(sys.executable).parent)}
    subprocess.run([sys.executable, "manage.py", "makemigrations", "notes"], cwd=root, check=True, env=env)
    return root


def test_django_project_end_to_end(corrals: list[Corral], tmp_path: Path, postgres_url: str) -> None:
    project = django_project(tmp_path / "project")
    steps = ["python manage.py migrate --noinput", "python manage.py collectstatic --noinput"]
    args = [arg for step in steps for arg in ("--prestart", step)]
    env = {"DATABASE_URL": postgres_url, "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    corral = Corral(project, "mysite.wsgi:application", "-w", "2", "--threads", "4", *args,
                    "--prestart-lock", postgres_url, "--release", "r1", env=env)
    corrals.append(corral)
    corral.wait_ready(2, timeout=120)
    assert "mysite.wsgi:application is a WSGI app" in corral.log

    login = corral.get("/admin/login/")
    assert login.status_code == 200 and "Django administration" in login.text
    css = corral.get("/static/admin/css/base.css")  # DEBUG is off: only WhiteNoise serves it
    assert css.status_code == 200 and "text/css" in css.headers["content-type"]
    assert corral.get("/add/").text == "1"
    assert corral.get("/add/").text == "2"
    with psycopg.connect(postgres_url) as connection:
        applied = connection.execute("select count(*) from django_migrations where app = 'notes'").fetchone()
    assert applied == (1,)

    # the apps were loaded once, in the template: the workers forked with them ready
    template_pids = (project / "ready.log").read_text().split()
    assert len(template_pids) == 1
    assert int(template_pids[0]) not in corral.ready_pids()

    # reloads lose no request, and a request in flight (a 1.5 s view) finishes on the old worker
    stop = threading.Event()
    failures: list[str] = []
    served = [0]

    def client() -> None:
        with httpx.Client(base_url=corral.url, timeout=30) as session:
            deadline = time.monotonic() + 120
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    response = session.get("/hello/")
                    if response.status_code != 200:
                        failures.append(str(response.status_code))
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                served[0] += 1

    slow: list[str] = []
    threads = [threading.Thread(target=client) for _ in range(4)]
    threads.append(threading.Thread(target=lambda: slow.append(corral.get("/slow/?s=1.5", timeout=60).text)))
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: served[0] > 50, what="load")
        for _ in range(2):
            result = run_cli("reload", "--control", str(corral.control), timeout=180)
            assert result.returncode == 0, result.stderr
        count = served[0]
        wait_for(lambda: served[0] > count + 50, what="load after the reloads")
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert failures == []
    assert slow == ["slow done"]
    assert len((project / "ready.log").read_text().split()) == 3  # one per generation's template
    # the release's steps ran once: the reloads did not run them again
    assert corral.log.count("python manage.py migrate --noinput") >= 1


def test_apps_discovery_in_a_django_project_picks_asgi_and_says_so(corrals: list[Corral], tmp_path: Path) -> None:
    """APP omitted beside manage.py: `startproject` wrote asgi.py and wsgi.py; ASGI is served, and the banner
    says which file was picked and how to ask for the other."""
    project = tmp_path / "project"
    project.mkdir()
    subprocess.run([str(Path(sys.executable).with_name("django-admin")), "startproject", "mysite", str(project)],
                   check=True)
    corral = Corral(project, "", "-w", "1")
    corrals.append(corral)
    corral.wait_ready(1)
    wait_for(lambda: "  try:" in corral.log, what="the banner")
    assert "serving mysite.asgi:application" in corral.log
    assert "app:       Django project: mysite/asgi.py picked over wsgi.py (ASGI preferred; APP " \
           "mysite.wsgi:application for WSGI)" in corral.log
    assert "is a WSGI app" not in corral.log
    login = corral.get("/admin/login/")
    assert login.status_code == 200 and "Django administration" in login.text
