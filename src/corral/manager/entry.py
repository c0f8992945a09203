"""The manager's own interpreter.

`corral run` parses and validates its options with typer and pydantic, then replaces itself (same pid, so
signals, systemd's main PID and inherited sockets are unaffected) with `python -m corral.manager.entry`,
which receives the options as plain data. The manager lives as long as the service does and never loads
the command line's libraries, which would otherwise add about 16 MiB to it (measured beside the memory
benchmark's workers: 33 MiB PSS before, 17 after).
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import sys
from collections.abc import Sequence

from corral.errors import CorralError, ExitCode
from corral.options import Options
from corral.process import MANAGER_SIGNALS, set_process_title

OPTIONS_VAR = "CORRAL_MANAGER_OPTIONS"


def exec_manager(options: Options, arguments: Sequence[str], command: str = "run") -> None:
    """Become the manager. `arguments` (the `corral run` command line) are only shown by `ps`, which
    every local user can read: secrets in them are masked (the options travel in the environment)."""
    from corral.redact import redact_arguments

    sys.stdout.flush()
    sys.stderr.flush()
    env = {**os.environ, OPTIONS_VAR: options.dumps()}
    # -P: the current directory is the app's, and must not shadow the modules the manager imports
    argv = [sys.executable, "-P", "-m", "corral.manager.entry", command, *redact_arguments(arguments)]
    signal.pthread_sigmask(signal.SIG_BLOCK, MANAGER_SIGNALS)  # kept pending until the manager's handlers exist
    try:
        os.execve(sys.executable, argv, env)
    finally:  # reached only if the exec failed
        signal.pthread_sigmask(signal.SIG_UNBLOCK, MANAGER_SIGNALS)


def import_asyncio_without_tls() -> None:
    """Import asyncio with `ssl` hidden, then importable again.

    asyncio imports ssl (and OpenSSL's libraries) for TLS transports, which the manager never opens: TLS is the
    workers' (the manager's certificate service and ACME client import ssl themselves when HTTPS is on). About
    1.2 MiB of the manager's 15 MiB PSS, the process gunicorn does not have (docs/benchmarks.md, WSGI memory).
    """
    if "asyncio" in sys.modules or "ssl" in sys.modules:
        return
    sys.modules["ssl"] = None  # type: ignore[assignment]  # an import of it raises ImportError meanwhile
    try:
        import asyncio  # noqa: F401
    finally:
        del sys.modules["ssl"]


def main() -> None:
    text = os.environ.pop(OPTIONS_VAR, None)
    if text is None:
        print("corral: the manager is started by `corral run`", file=sys.stderr)
        sys.exit(ExitCode.USAGE)
    set_process_title("corral")  # what `corral run` showed in ps, top and pgrep before it became python
    import_asyncio_without_tls()
    from corral.manager.main import run

    try:
        code = run(Options.loads(text))
    except CorralError as exc:
        print(f"corral: {exc}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        code = 130
    except OSError as exc:  # the manager's own setup found no file descriptor left: one line, not a traceback
        if exc.errno not in (errno.EMFILE, errno.ENFILE):
            raise
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        print(f"corral: no file descriptor left ({exc.strerror}; open files limit {limit}): raise it "
              "(ulimit -n, LimitNOFILE=)", file=sys.stderr, flush=True)
        os._exit(ExitCode.ERROR)  # a half-made event loop would print its own errors at exit
    sys.exit(int(code))


if __name__ == "__main__":
    main()
