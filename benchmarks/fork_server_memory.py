#!/usr/bin/env python3
"""Would a fork server close the WSGI memory gap? A model of Corral's process tree, built three ways.

Corral's manager executes each template as a fresh interpreter, so the manager's own interpreter pages (about
13 MiB, docs/benchmarks.md "WSGI memory, process by process") are shared with nobody. The alternative weighed
for issue 22 is a fork server: a process split off the manager after its imports and before its event loop
starts, which forks the templates, so that the manager, the fork server, the templates and the workers share
the interpreter's pages. This script builds the tree each way, without sockets, and sums the PSS of every
process:

- `exec`: the template is a fresh interpreter (what Corral does);
- `fork-server`: a process forked from the manager forks the template;
- `fork`: the template is forked straight from the manager (the most sharing possible: not an option for the
  real manager, which forks only with its event loop and threads running, but the bound of what sharing gives).

The manager imports what Corral's does (asyncio with ssl hidden, `corral.manager.main`); the template imports
Corral's template and WSGI modules and the app of benchmarks/apps, then `gc.freeze()` as Corral's does; each of
the two workers builds an event loop and calls the app 200 times. Layouts alternate, round after round:

    .venv/bin/python benchmarks/fork_server_memory.py --rounds 5 --app flask
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
APPS = {"flask": ("wsgi_flask", "app"), "django": ("wsgi_django", "application")}
LAYOUTS = ("exec", "fork-server", "fork")
WORKERS = 2
CALLS = 200


def memory(pid: int) -> tuple[float, float]:
    """PSS and USS in MiB, from /proc/PID/smaps_rollup."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value, *_ = line.split()
        fields[name] = int(value)
    return fields["Pss:"] / 1024, (fields["Private_Clean:"] + fields["Private_Dirty:"]) / 1024


def call_app(app: object) -> None:
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000",
               "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(),
               "wsgi.errors": sys.stderr, "wsgi.version": (1, 0), "wsgi.multithread": True,
               "wsgi.multiprocess": True, "wsgi.run_once": False, "QUERY_STRING": "", "HTTP_HOST": "127.0.0.1"}
    for _ in range(CALLS):
        body = app(dict(environ), lambda status, headers, exc_info=None: None)  # type: ignore[operator]
        b"".join(body)
        getattr(body, "close", lambda: None)()


def template(app_name: str, report: int) -> None:
    """Import the app once, fork the workers, tell their pids, and wait to be killed."""
    import asyncio
    import importlib

    import corral.worker.template
    import corral.worker.wsgi  # noqa: F401

    sys.path.insert(0, str(HERE / "apps"))
    module, attr = APPS[app_name]
    app = getattr(importlib.import_module(module), attr)
    gc.collect()
    gc.freeze()
    pids = []
    for _ in range(WORKERS):
        pid = os.fork()
        if pid == 0:
            loop = asyncio.new_event_loop()
            call_app(app)
            loop.run_until_complete(asyncio.sleep(0))
            os.write(report, b"w")
            time.sleep(600)
            os._exit(0)
        pids.append(pid)
    os.write(report, (" ".join(map(str, [os.getpid(), *pids])) + "\n").encode())
    time.sleep(600)
    os._exit(0)


def measure(layout: str, app_name: str) -> dict[str, float]:
    """Build the tree in a fresh manager-like interpreter and return its processes' PSS and USS."""
    out = subprocess.run([sys.executable, __file__, "--manager", layout, "--app", app_name],
                         capture_output=True, text=True, check=True).stdout
    figures: dict[str, float] = {}
    for line in out.splitlines():
        name, value = line.split("=")
        figures[name] = float(value)
    return figures


def manager(layout: str, app_name: str) -> None:
    from corral.manager.entry import import_asyncio_without_tls

    import_asyncio_without_tls()
    import corral.manager.main  # noqa: F401

    read, write = os.pipe()
    server = None
    if layout == "exec":
        subprocess.Popen([sys.executable, __file__, "--template", str(write), "--app", app_name], pass_fds=[write])
    elif layout == "fork":
        if os.fork() == 0:
            template(app_name, write)
    else:
        gc.freeze()
        server = os.fork()
        if server == 0:
            if os.fork() == 0:
                template(app_name, write)
            time.sleep(600)
            os._exit(0)
    import asyncio

    loop = asyncio.new_event_loop()  # the manager goes on with its own life meanwhile
    loop.run_until_complete(asyncio.sleep(0.1))
    with os.fdopen(read) as pipe:
        pids = [int(pid) for pid in pipe.readline().split()]
        while len(pipe.read(WORKERS)) < WORKERS:  # each worker has called the app
            pass
    time.sleep(0.5)
    roles = {"manager": os.getpid(), "template": pids[0], **{f"worker{i}": p for i, p in enumerate(pids[1:])}}
    if server is not None:
        roles["fork server"] = server
    total = 0.0
    for role, pid in roles.items():
        pss, uss = memory(pid)
        total += pss
        print(f"{role} pss={pss:.2f}\n{role} uss={uss:.2f}")
    print(f"total pss={total:.2f}")
    for pid in [p for role, p in roles.items() if role != "manager"]:
        os.kill(pid, 9)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--app", choices=sorted(APPS), default="flask")
    parser.add_argument("--manager", choices=LAYOUTS, help=argparse.SUPPRESS)
    parser.add_argument("--template", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.template is not None:
        template(args.app, args.template)
    if args.manager:
        manager(args.manager, args.app)
        return 0
    runs: dict[str, list[dict[str, float]]] = {layout: [] for layout in LAYOUTS}
    for round_number in range(args.rounds):
        order = LAYOUTS if round_number % 2 == 0 else LAYOUTS[::-1]
        for layout in order:
            runs[layout].append(measure(layout, args.app))
        print(f"round {round_number + 1}: " + ", ".join(f"{layout} {runs[layout][-1]['total pss']:.1f} MiB"
                                                     for layout in LAYOUTS), flush=True)
    print(f"\n{args.app}, {args.rounds} rounds, medians in MiB (PSS / USS):\n")
    roles = sorted({name.rsplit(" ", 1)[0] for run in runs["fork-server"] for name in run} - {"total"})
    print("| layout | total PSS | " + " | ".join(roles) + " |")
    print("|---|---:|" + "---|" * len(roles))
    for layout in LAYOUTS:
        def median(name: str, layout: str = layout) -> str:
            values = [run[name] for run in runs[layout] if name in run]
            return f"{statistics.median(values):.1f}" if values else ""

        cells = [f"{median(role + ' pss')} / {median(role + ' uss')}" if median(role + " pss") else ""
                 for role in roles]
        print(f"| {layout} | {median('total pss')} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
