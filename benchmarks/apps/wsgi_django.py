"""A one-file Django project: hello and a 20 ms wait (a database query), for benchmarks/wsgi.py.

Configured the way `startproject` does it (settings, URLconf, `get_wsgi_application()`, which runs
`django.setup()` at import), with the default middleware and without a database.
"""

import time

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import path

settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    SECRET_KEY="benchmark-only",
    INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "django.contrib.sessions"],
    MIDDLEWARE=[
        "django.middleware.security.SecurityMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.clickjacking.XFrameOptionsMiddleware",
    ],
)


def hello(request: HttpRequest) -> HttpResponse:
    return HttpResponse("Hello, world!")


def sleep(request: HttpRequest) -> HttpResponse:
    time.sleep(0.02)
    return HttpResponse("slept")


urlpatterns = [path("", hello), path("sleep", sleep)]

from django.core.wsgi import get_wsgi_application  # noqa: E402  # after the settings, as wsgi.py does

application = get_wsgi_application()
