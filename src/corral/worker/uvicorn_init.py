"""uvicorn's server without its command line.

`import uvicorn` (or of any of its submodules) first runs `uvicorn/__init__.py`, which imports `uvicorn.main`
and with it click, multiprocessing, watchfiles and anyio: a command line and a reloader that no template or
worker uses, about 3 MiB of a template's pages (benchmarks.md, WSGI memory). `defer_package_init` registers the
package without running its `__init__`: the submodules a worker uses (`uvicorn.config`, `uvicorn.server`, the
protocols) import as usual, `Config`, `Server` and `__version__` come from them, and any other top-level name
(an app's `uvicorn.run`, `from uvicorn import main`) runs the real `__init__` on first use, so the app sees
the package it expects.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from typing import Any

LIGHT = {"Config": "uvicorn.config", "Server": "uvicorn.server", "__version__": "uvicorn._version"}


def defer_package_init() -> None:
    """Register `uvicorn` with its `__init__` deferred; nothing if it is already imported or not installed."""
    if "uvicorn" in sys.modules:
        return
    spec = importlib.util.find_spec("uvicorn")
    if spec is None or spec.loader is None:
        return
    package = importlib.util.module_from_spec(spec)
    loader = spec.loader
    lock = threading.Lock()

    def attribute(name: str) -> Any:
        if name in LIGHT:
            value = getattr(importlib.import_module(LIGHT[name]), name)
            setattr(package, name, value)
            return value
        with lock:
            if package.__dict__.pop("__getattr__", None) is not None:
                loader.exec_module(package)  # the real __init__, in the same module object
        try:
            return package.__dict__[name]
        except KeyError:
            raise AttributeError(f"module 'uvicorn' has no attribute {name!r}") from None

    setattr(package, "__getattr__", attribute)  # noqa: B010  # PEP 562: looked up in the module's namespace
    sys.modules["uvicorn"] = package
