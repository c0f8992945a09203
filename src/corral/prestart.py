"""Steps that run before serving (migrations, seeding), once across instances.

Runs in the manager before any worker exists. Each step is a shell command (`/bin/sh -c`, so
`alembic upgrade head && python seed.py` works), run in its own process group under a small
guard process; its output is logged line by line as `prestart[N] | ...`. A lock serialises the
steps across instances: `file:PATH` (`flock`, one host) or a `postgresql://` URL (a session
advisory lock, many hosts). With a release id, the first instance to hold the lock runs the steps
and records the release as done; the others find the record and skip.

Run as `python -m corral.prestart PARENT_PID COMMAND` this module is the guard: it runs COMMAND
in its own process group and kills that group when the manager dies, so no step outlives it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, TYPE_CHECKING, Any

from corral.errors import ConfigError, CorralError, ExitCode

if TYPE_CHECKING:
    from psycopg import Connection

    from corral.options import Options

log = logging.getLogger("corral.prestart")

# One advisory lock key for every corral instance using a database: a fixed namespace rather than
# the instance name, which may differ between instances that share the database.
PG_LOCK_KEY = int.from_bytes(hashlib.sha256(b"corral.prestart").digest()[:8], "big", signed=True)
# The record of done releases lives in a schema of its own, so an app's migrations (alembic autogenerate and
# `alembic check` compare the app's models with the `public` schema) never see it.
PG_SCHEMA = "corral"
PG_RELEASES_TABLE = f"{PG_SCHEMA}.corral_releases"
PG_LEGACY_TABLE = "public.corral_releases"  # where versions before the schema kept it: moved on first use
PG_CONNECT_TIMEOUT = 15
# Server-side keepalives for the lock's session: a host that vanishes without closing its TCP
# connection loses the lock after about 25 s instead of the kernel default of hours.
PG_KEEPALIVES = {"tcp_keepalives_idle": 10, "tcp_keepalives_interval": 5, "tcp_keepalives_count": 3}
# How long to wait for a step's output to end once its process group is gone.
OUTPUT_GRACE = 5.0


LAST_RUN: dict[str, float | bool] = {}  # the latest run in this process: seconds, ok (for /metrics)


def run_prestart(settings: Options, *, reload: bool = False) -> None:
    """Run the pre-start steps of `settings` under its lock; raise CorralError if one fails.

    Nothing to do without steps, or on a reload unless `prestart_on_reload` is set.
    """
    if not settings.prestart or (reload and not settings.prestart_on_reload):
        return
    started = time.monotonic()
    ok = False
    try:
        _run_prestart(settings)
        ok = True
    finally:
        LAST_RUN.update(seconds=time.monotonic() - started, ok=ok)


async def run_prestart_for_reload(settings: Options) -> None:
    """`run_prestart(settings, reload=True)` in a daemon thread, awaited.

    A manager that stops meanwhile exits without waiting for the steps or for the lock: the steps' guard kills
    them as the manager exits, and the lock goes with the manager's descriptor or session. (`asyncio.to_thread`
    would hold the manager's exit until the step ended, up to --prestart-timeout.)"""
    outcome: concurrent.futures.Future[None] = concurrent.futures.Future()

    def run() -> None:
        try:
            run_prestart(settings, reload=True)
        except BaseException as exc:  # handed to the awaiting task, which raises it
            outcome.set_exception(exc)
        else:
            outcome.set_result(None)

    threading.Thread(target=run, name="prestart-on-reload", daemon=True).start()
    await asyncio.wrap_future(outcome)  # ignored once the awaiting task is cancelled and the loop closed


def _run_prestart(settings: Options) -> None:
    from corral.envfile import app_environment

    env = app_environment(settings.env_file, os.environ) if settings.env_file else None
    lock = open_lock(settings.prestart_lock)
    if lock is None:
        if settings.release:
            raise ConfigError("--release needs --prestart-lock (file:PATH or a postgresql:// URL)")
        run_steps(settings.prestart, settings.prestart_timeout, env)
        return
    with lock:
        if settings.release and lock.is_done(settings.release):
            log.info("prestart: release %s already done (%s); skipping the steps", settings.release, lock)
            return
        run_steps(settings.prestart, settings.prestart_timeout, env)
        if settings.release:
            lock.record(settings.release)
            log.info("prestart: release %s recorded as done (%s)", settings.release, lock)


def run_steps(commands: list[str], timeout: float, env: dict[str, str] | None = None) -> None:
    """Run each command in turn (in `env`, default the manager's); the first failure raises."""
    for index, command in enumerate(commands, start=1):
        run_step(index, command, timeout, env)


def run_step(index: int, command: str, timeout: float, env: dict[str, str] | None = None) -> None:
    """Run one step under the guard, log its output, kill its process group when it ends."""
    name = f"prestart[{index}]"
    log.info("%s: running: %s", name, command)
    started = time.monotonic()
    try:
        guard = subprocess.Popen(
            [sys.executable, "-P", "-m", "corral.prestart", str(os.getpid()), command],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:  # no process or descriptor left (EAGAIN, EMFILE, ENOMEM)
        raise CorralError(f"pre-start step {index} could not start: {exc.strerror}: {command}",
                          ExitCode.PRESTART_FAILED) from exc
    assert guard.stdout is not None
    reader = threading.Thread(target=_log_lines, args=(guard.stdout, name), daemon=True)
    reader.start()
    status: int | None = None
    try:
        status = guard.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    finally:
        # A timed-out step, an interrupted manager, or processes a finished step left behind.
        _kill_group(guard.pid)
        guard.wait()
        reader.join(OUTPUT_GRACE)
    if status is None:
        raise CorralError(
            f"pre-start step {index} timed out after {timeout:g} s and was killed: {command}",
            ExitCode.PRESTART_FAILED,
        )
    if status != 0:
        # The guard reports the shell's status; a negative one means the guard itself was killed.
        how = f"exit code {status}" if status > 0 else f"signal {-status}"
        raise CorralError(f"pre-start step {index} failed with {how}: {command}", ExitCode.PRESTART_FAILED)
    log.info("%s: done in %.1f s", name, time.monotonic() - started)


def _log_lines(pipe: IO[bytes], name: str) -> None:
    with pipe:
        for line in pipe:
            log.info("%s | %s", name, line.decode(errors="replace").rstrip("\r\n"))


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class PrestartLock(ABC):
    """Held while the steps run; keeps the record of the releases whose steps are done."""

    def __enter__(self) -> PrestartLock:
        self.acquire()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.release()

    @abstractmethod
    def acquire(self) -> None:
        """Block until the lock is held; log once if another instance holds it."""

    @abstractmethod
    def release(self) -> None: ...

    @abstractmethod
    def is_done(self, release: str) -> bool: ...

    @abstractmethod
    def record(self, release: str) -> None: ...


def open_lock(spec: str | None) -> PrestartLock | None:
    """The lock named by --prestart-lock: `file:PATH` or a `postgresql://` URL."""
    if not spec:
        return None
    if spec.startswith("file:") and spec != "file:":
        return FileLock(Path(spec.removeprefix("file:")))
    if spec.startswith(("postgresql://", "postgres://")):
        return PostgresLock(spec)
    raise ConfigError(f"invalid --prestart-lock {spec!r}: expected file:PATH or a postgresql:// URL")


class FileLock(PrestartLock):
    """`flock` on PATH (instances on one host); done releases are listed in PATH.releases."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records = path.with_name(path.name + ".releases")
        self._fd: int | None = None

    def __str__(self) -> str:
        return f"lock file {self.path}"

    def _open(self, path: Path, flags: int) -> int:
        """Never through a symbolic link, never another user's file or directory (`paths`)."""
        from corral import paths

        try:
            directory = paths.open_dir(path.parent, "--prestart-lock", others=0o002, sticky_ok=True, create=False)
            try:
                return paths.open_file(directory, path.name, flags | os.O_CREAT, path)
            finally:
                os.close(directory)
        except OSError as exc:
            raise CorralError(f"pre-start {self}: {exc.strerror}", ExitCode.PRESTART_FAILED) from exc

    def acquire(self) -> None:
        fd = self._open(self.path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("prestart: waiting for the %s (another instance holds it)", self)
            fcntl.flock(fd, fcntl.LOCK_EX)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def is_done(self, release: str) -> bool:
        try:
            lines = self.records.read_text().splitlines()
        except FileNotFoundError:
            return False
        except OSError as exc:
            message = f"pre-start records {self.records}: {exc.strerror}"
            raise CorralError(message, ExitCode.PRESTART_FAILED) from exc
        for line in lines:
            # A line cut short by a crash is not a record: the steps run again.
            with contextlib.suppress(ValueError):
                if json.loads(line).get("release") == release:
                    return True
        return False

    def record(self, release: str) -> None:
        line = json.dumps({"release": release, "done_at": datetime.now(UTC).isoformat()}) + "\n"
        try:
            with os.fdopen(self._open(self.records, os.O_WRONLY | os.O_APPEND), "a") as records:
                records.write(line)
                records.flush()
                os.fsync(records.fileno())
        except OSError as exc:
            raise CorralError(
                f"pre-start records {self.records}: {exc.strerror}", ExitCode.PRESTART_FAILED
            ) from exc


class PostgresLock(PrestartLock):
    """A session advisory lock on a dedicated connection (instances on many hosts).

    The lock belongs to the session: if this process dies, the kernel closes the connection, the
    server ends the session and the lock passes to the next instance. Done releases are rows of
    the `corral.corral_releases` table (schema and table created on first use).
    """

    def __init__(self, url: str) -> None:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        try:
            self.params: dict[str, Any] = conninfo_to_dict(url)
        except psycopg.Error as exc:
            raise ConfigError(f"invalid --prestart-lock URL: {_first_line(exc)}") from exc
        self.params.setdefault("connect_timeout", PG_CONNECT_TIMEOUT)
        self.params.setdefault("application_name", f"corral prestart {socket.gethostname()} {os.getpid()}")
        self.params.setdefault("keepalives", 1)
        self._conn: Connection[Any] | None = None

    def __str__(self) -> str:
        user = self.params.get("user", "")
        host = self.params.get("host", "localhost")
        port = self.params.get("port", 5432)
        database = self.params.get("dbname", user)
        return f"PostgreSQL advisory lock {PG_LOCK_KEY} on {user}@{host}:{port}/{database}"

    def acquire(self) -> None:
        import psycopg

        try:
            self._conn = psycopg.connect(**self.params, autocommit=True)
        except psycopg.Error as exc:
            message = f"pre-start lock: cannot connect to PostgreSQL: {_first_line(exc)}"
            raise CorralError(message, ExitCode.PRESTART_FAILED) from exc
        for setting, value in PG_KEEPALIVES.items():
            self._value(f"SET {setting} = {value}")
        if not self._value("SELECT pg_try_advisory_lock(%s)", (PG_LOCK_KEY,)):
            log.info("prestart: waiting for the %s (another instance holds it)", self)
            self._value("SELECT pg_advisory_lock(%s)", (PG_LOCK_KEY,))

    def release(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def is_done(self, release: str) -> bool:
        self._move_legacy_table()
        if self._value("SELECT to_regclass(%s)", (PG_RELEASES_TABLE,)) is None:
            return False
        query = f"SELECT EXISTS (SELECT FROM {PG_RELEASES_TABLE} WHERE release = %s)"
        return bool(self._value(query, (release,)))

    def record(self, release: str) -> None:
        self._move_legacy_table()
        self._value(f"CREATE SCHEMA IF NOT EXISTS {PG_SCHEMA}")
        self._value(
            f"CREATE TABLE IF NOT EXISTS {PG_RELEASES_TABLE}"
            " (release text PRIMARY KEY, done_at timestamptz NOT NULL DEFAULT now())"
        )
        insert = f"INSERT INTO {PG_RELEASES_TABLE} (release) VALUES (%s) ON CONFLICT DO NOTHING"
        self._value(insert, (release,))

    def _move_legacy_table(self) -> None:
        """A `public.corral_releases` (written before the schema) moves to the `corral` schema, with its rows;
        under the lock, in one transaction."""
        if self._value("SELECT to_regclass(%s)", (PG_LEGACY_TABLE,)) is None:
            return
        assert self._conn is not None
        import psycopg

        try:
            with self._conn.transaction():
                self._conn.execute(f"CREATE SCHEMA IF NOT EXISTS {PG_SCHEMA}")
                if self._value("SELECT to_regclass(%s)", (PG_RELEASES_TABLE,)) is None:
                    self._conn.execute(f"ALTER TABLE {PG_LEGACY_TABLE} SET SCHEMA {PG_SCHEMA}")
                else:
                    self._conn.execute(
                        f"INSERT INTO {PG_RELEASES_TABLE} SELECT * FROM {PG_LEGACY_TABLE} ON CONFLICT DO NOTHING"
                    )
                    self._conn.execute(f"DROP TABLE {PG_LEGACY_TABLE}")
        except psycopg.Error as exc:
            raise CorralError(f"pre-start {self}: moving {PG_LEGACY_TABLE}: {_first_line(exc)}",
                              ExitCode.PRESTART_FAILED) from exc
        log.info("prestart: moved %s to %s", PG_LEGACY_TABLE, PG_RELEASES_TABLE)

    def _value(self, query: str, params: tuple[object, ...] = ()) -> Any:
        """The first value `query` returns (None if no rows); a database error is one line."""
        import psycopg

        assert self._conn is not None
        try:
            cursor = self._conn.execute(query, params)
            row = cursor.fetchone() if cursor.description else None
        except psycopg.Error as exc:
            raise CorralError(f"pre-start {self}: {_first_line(exc)}", ExitCode.PRESTART_FAILED) from exc
        return row[0] if row else None


def _first_line(exc: BaseException) -> str:
    """psycopg messages often span lines (a hint, a detail); the log wants one."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines) or type(exc).__name__


def _guard(parent: int, command: str) -> int:
    """Run `command` with `sh -c` in this process group; if the manager dies, kill the group."""
    from corral.process import die_with_parent

    signal.signal(signal.SIGTERM, _kill_own_group)
    die_with_parent(parent, signal.SIGTERM)
    status = subprocess.call(["/bin/sh", "-c", command])
    return 128 - status if status < 0 else status


def _kill_own_group(signum: int, frame: FrameType | None) -> None:
    os.killpg(0, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(_guard(int(sys.argv[1]), sys.argv[2]))
