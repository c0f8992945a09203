"""The locks that serialise pre-start steps across instances: `file:PATH` (flock, one host) or a `postgresql://`
URL (a session advisory lock, many hosts), each with its record of the releases whose steps are done."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import socket
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from corral.errors import ConfigError, CorralError, ExitCode

if TYPE_CHECKING:
    from psycopg import Connection

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

class PrestartLock(ABC):
    """Held while the steps run; keeps the record of the releases whose steps are done."""

    on_wait: Callable[[str], None] | None = None  # told (with the lock's name) when another instance holds it

    def _waiting(self) -> None:
        log.info("prestart: waiting for the %s (another instance holds it)", self)
        if self.on_wait is not None:
            self.on_wait(str(self))

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
            self._waiting()
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
            self._waiting()
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
