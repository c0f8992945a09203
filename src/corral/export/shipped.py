"""The project's files that Corral reads in a container (--log-config, --ssl-ca-certs, --certfile, --keyfile,
--acme-ca-bundle), checked when the export is written: the image must hold them where the command names them,
readable by the container's user, or the export refuses in one line.

An image copies the project with each file's mode and root as its owner. A file others may not read (a key,
or a config written with mode 0600) is therefore given to the container's user by the Dockerfile; a directory
on its way that others may not enter is refused, since no such step can open it without opening the rest.
The log files a --log-config opens must be where the container can write: the state directory or /tmp.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from corral.errors import ConfigError


@dataclass(frozen=True)
class Shipped:
    flag: str
    path: str  # relative to the project, which the image holds at its working directory
    private: bool  # others may not read it: the image gives it to the container's user


def shipped(flag: str, value: str, project: Path, uid: int) -> Shipped:
    """`value` (absolute or relative to the project) as the image holds it, or one line saying why it cannot."""
    root = project.resolve()
    target = (project / value).resolve()
    try:
        relative = target.relative_to(root)
    except ValueError:
        raise ConfigError(f"{flag} {value} is outside {project}, which the image holds") from None
    try:
        info = target.stat()
    except OSError as exc:
        raise ConfigError(f"{flag} {value}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{flag} {value}: not a regular file")
    if not os.access(target, os.R_OK) or not info.st_mode & stat.S_IRUSR:
        raise ConfigError(f"{flag} {value}: not readable")
    for directory in [root / part for part in relative.parents if part != Path(".")]:
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            raise ConfigError(
                f"{flag} {value}: {directory} is mode {stat.S_IMODE(mode):o}, which the container's user "
                f"(uid {uid}) cannot enter in the image: allow it (chmod o+x) or move the file"
            )
    return Shipped(flag, relative.as_posix(), private=not info.st_mode & stat.S_IROTH)


def log_files(config: str) -> dict[str, str]:
    """The files the handlers of a --log-config open, by handler name (as written: absolute or relative)."""
    from corral.logs import read_log_config

    handlers = read_log_config(config).get("handlers") or {}
    found = {}
    for name, handler in handlers.items() if isinstance(handlers, dict) else ():
        filename = handler.get("filename") if isinstance(handler, dict) else None
        if isinstance(filename, str | os.PathLike):
            found[str(name)] = os.fspath(filename)
    return found


def check_log_files(flag: str, value: str, config: Path, workdir: str, writable: tuple[str, ...]) -> None:
    """Refuse a --log-config whose handlers open a file outside the container's `writable` directories."""
    for name, filename in log_files(str(config)).items():
        inside = PurePosixPath(os.path.normpath(PurePosixPath(workdir, filename)))
        if str(inside.parent) not in writable:
            raise ConfigError(
                f"{flag} {value}: handler {name!r} writes to {filename}, but the container can write files only "
                f"directly in {' and '.join(writable)}: log to a stream (the container's log) or to a file in "
                f"{writable[0]}"
            )
