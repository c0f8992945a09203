"""What a worker carries: uvicorn's server without its command line (`corral.worker.uvicorn_init`).

`import uvicorn` runs uvicorn's `__init__`, which imports click, multiprocessing, watchfiles and anyio for its
command line and reloader: about 3 MiB of every template (docs/benchmarks.md, WSGI memory). A worker serving a
plain app has none of them, and an app that uses uvicorn's top level still gets the real package.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness import Corral, write_app

APP = """
    import json, sys

    UNUSED = ["uvicorn.main", "uvicorn.supervisors", "click", "watchfiles", "anyio", "multiprocessing"]

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/json")])
        if environ["PATH_INFO"] == "/uvicorn":  # the app asks for uvicorn's top level after all
            import uvicorn
            from uvicorn import main
            seen = {"run": uvicorn.run.__module__, "main": main.name, "config": uvicorn.Config.__module__,
                    "version": uvicorn.__version__}
            return [json.dumps(seen).encode()]
        return [json.dumps([name for name in UNUSED if name in sys.modules]).encode()]
"""


def test_a_worker_imports_no_command_line_of_uvicorn(corrals: list[Corral], tmp_path: Path) -> None:
    write_app(tmp_path, APP)
    corral = Corral(tmp_path, "app.py", "-w", "1")
    corrals.append(corral)
    corral.wait_ready(1)
    assert json.loads(corral.get("/").text) == []
    seen = json.loads(corral.get("/uvicorn").text)
    assert seen["run"] == "uvicorn.main" and seen["main"] == "main", seen
    assert seen["config"] == "uvicorn.config" and seen["version"].count(".") == 2, seen
    assert json.loads(corral.get("/").text)[:2] == ["uvicorn.main", "uvicorn.supervisors"]
