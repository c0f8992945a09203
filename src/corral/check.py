"""`corral check`: import the app in a fresh interpreter, as a template does, and measure what it costs.

The parent resolves APP (file system only) and starts `python -m corral.check FD MODULE ATTR PATH
FACTORY`; that child loads what a template loads before the app, measures itself, imports the app,
measures again and writes the figures as JSON to FD. The app's own output goes to stderr, so
`--json` stays clean. The Kubernetes export sizes its pods from these figures.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from corral.discovery import resolve_target
from corral.errors import CorralError, ExitCode
from corral.options import Options

MIB = 1024 * 1024
BLOCK_SIZE = 64  # a typical small object (pymalloc block), to turn a count of blocks into bytes
# What a warmed-up run costs beyond the template's pages (benchmarks/memory_warmup.py, 3000 requests over 3
# workers, docs/architecture.md "Memory"): the manager, and per worker a base (event loop, server, buffers)
# plus the share of the app's Python objects that serving writes to (reference counts) and so copies.
MANAGER_PSS = 16 * MIB
WORKER_BASE = 4 * MIB
WORKER_WEAR = 0.6
# A budget (pod limits) gives every worker a full private copy of the app and half again.
WORKER_HEADROOM = 1.5


@dataclass(frozen=True)
class Memory:
    """Bytes of one process: resident, unique (private) and proportional (shared pages split)."""

    rss: int
    uss: int
    pss: int | None  # Linux only

    def minus(self, other: Memory) -> Memory:
        pss = self.pss - other.pss if self.pss is not None and other.pss is not None else None
        return Memory(self.rss - other.rss, self.uss - other.uss, pss)


@dataclass(frozen=True)
class Footprint:
    app: str
    interpreter: Memory  # the template before importing the app: Python, corral, uvicorn
    after_import: Memory
    import_seconds: float
    python_heap: int = 0  # bytes of small Python objects the import created (pymalloc blocks, roughly)

    @property
    def app_share(self) -> Memory:
        return self.after_import.minus(self.interpreter)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "app_share": asdict(self.app_share)}


# Used by the exports when the app cannot be imported here: a FastAPI app with a few libraries.
FALLBACK = Footprint(
    app="(not measured)",
    interpreter=Memory(rss=40 * MIB, uss=32 * MIB, pss=None),
    after_import=Memory(rss=120 * MIB, uss=100 * MIB, pss=None),
    import_seconds=0.0,
    python_heap=40 * MIB,
)


def estimate_memory(footprint: Footprint, workers: int, preload: bool, max_memory: int | None) -> int:
    """Bytes a whole instance may need at most, a budget for limits (the exports size pods with it): manager +
    template + workers, rounded up to 16 MiB. `expected_memory` is what it takes once warmed up.

    The manager is about the bare interpreter. Each worker is budgeted at a full private copy of
    the app plus headroom for requests, even with preload: CPython's reference counting writes
    to shared pages, so copy-on-write sharing erodes as a worker runs. `--max-memory` is the
    most a worker may reach before it is recycled, so with it a worker is budgeted at that.
    """
    manager = footprint.interpreter.rss
    template = footprint.after_import.rss if preload else 0
    worker = max_memory if max_memory else int(footprint.after_import.uss * WORKER_HEADROOM)
    total = manager + template + workers * worker
    step = 16 * MIB
    return math.ceil(total / step) * step



def expected_memory(footprint: Footprint, workers: int, preload: bool, max_memory: int | None) -> int:
    """Bytes (PSS) a whole warmed-up instance takes: manager + template + workers, rounded up to 16 MiB.

    With preload the template's pages are shared: counted once, whatever the number of workers. Each worker
    adds what it copies as it serves: a base, and a share of the app's Python objects (CPython's reference
    counting writes to the pages that hold them). Without preload every worker holds its own copy of the app.
    `--max-memory` is the most a worker may reach before it is recycled, so with it a worker counts as that.
    """
    worker = WORKER_BASE + int(WORKER_WEAR * footprint.python_heap)
    if preload:
        template = footprint.after_import.pss or footprint.after_import.rss
    else:
        template = footprint.interpreter.pss or footprint.interpreter.rss
        worker += footprint.app_share.uss
    if max_memory:
        worker = max_memory
    total = MANAGER_PSS + template + workers * worker
    step = 16 * MIB
    return math.ceil(total / step) * step


def measure(settings: Options, cwd: Path, timeout: float = 300.0) -> Footprint:
    """Import the app of `settings` in a child interpreter; a failure is one CorralError line."""
    from corral.envfile import app_environment

    target = resolve_target(settings.app, settings.app_dir, cwd)
    # The app imports as it would under `corral run`: with its --env-file values (never printed).
    env = app_environment([str(cwd / path) for path in settings.env_file], os.environ)
    read_fd, write_fd = os.pipe()
    command = [
        sys.executable,
        "-P",
        "-m",
        "corral.check",
        str(write_fd),
        target.module,
        target.attr,
        target.path,
        "1" if settings.factory else "0",
    ]
    try:
        child = subprocess.run(
            command,
            cwd=cwd,
            pass_fds=(write_fd,),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=2,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise CorralError(
            f"importing {target} took more than {timeout:g} s (is it waiting for something?)",
            ExitCode.APP_FAILED_TO_START,
        ) from None
    finally:
        os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        output = pipe.read()
    if child.returncode < 0:
        name = signal.Signals(-child.returncode).name
        raise CorralError(f"importing {target} killed the interpreter ({name})", ExitCode.APP_FAILED_TO_START)
    try:
        result: dict[str, Any] = json.loads(output)
    except ValueError:
        raise CorralError(
            f"importing {target} ended the interpreter (exit code {child.returncode}) before it was measured",
            ExitCode.APP_FAILED_TO_START,
        ) from None
    if "error" in result:
        raise CorralError(str(result["error"]), ExitCode.APP_FAILED_TO_START)
    return Footprint(
        app=str(target),
        interpreter=Memory(**result["interpreter"]),
        after_import=Memory(**result["after_import"]),
        import_seconds=float(result["import_seconds"]),
        python_heap=int(result.get("python_heap", 0)),
    )


def report(footprint: Footprint, workers: int, settings: Options) -> Table:
    """The figures as a table, with what the whole instance needs for `workers` workers."""
    table = Table(title=f"corral check: {footprint.app}, imported in {footprint.import_seconds:.2f} s")
    for column in ("", "interpreter", "after import", "the app's share"):
        table.add_column(column, justify="right" if column else "left")
    share = footprint.app_share
    for label, key in (("RSS", "rss"), ("USS (private)", "uss"), ("PSS", "pss")):
        values = [getattr(memory, key) for memory in (footprint.interpreter, footprint.after_import, share)]
        table.add_row(label, *(_mib(value) for value in values))
    need = expected_memory(footprint, workers, settings.preload, settings.max_memory)
    budget = estimate_memory(footprint, workers, settings.preload, settings.max_memory)
    table.caption = (
        f"expected for {workers} worker{'s' if workers != 1 else ''}, warmed up (PSS of the whole tree): "
        f"{_mib(need)}; budget for a memory limit: {_mib(budget)}"
    )
    return table


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / MIB:.1f} MiB"


def _blocks() -> int:
    return sys.getallocatedblocks()


def _own_memory() -> dict[str, int | None]:
    import psutil

    info = psutil.Process().memory_full_info()
    return {"rss": info.rss, "uss": info.uss, "pss": getattr(info, "pss", None)}


def _child(argv: list[str]) -> int:
    """In the fresh interpreter: load what a template loads, measure, import the app, measure."""
    result_fd, module, attr, path, factory = argv
    import corral.worker.template  # noqa: F401 - the template's own imports come before the app's
    from corral.discovery import Target, import_app

    interpreter = _own_memory()
    blocks = _blocks()
    started = time.perf_counter()
    try:
        import_app(Target(module, attr, path), factory=factory == "1")
    except CorralError as exc:
        result: dict[str, Any] = {"error": str(exc)}
    else:
        seconds = time.perf_counter() - started
        result = {
            "interpreter": interpreter,
            "after_import": _own_memory(),
            "import_seconds": seconds,
            "python_heap": max(0, _blocks() - blocks) * BLOCK_SIZE,
        }
    with os.fdopen(int(result_fd), "w") as out:
        json.dump(result, out)
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
