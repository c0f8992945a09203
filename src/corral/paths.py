"""Paths Corral writes or reads, checked before use: an unusable one is one line and exit 2, never a traceback.

- The control socket replaces only a stale *socket*: a regular file, a directory or a symlink at `--control`
  is never removed.
- The per-user runtime directory that holds default control sockets (`/tmp/corral-UID`,
  `$XDG_RUNTIME_DIR/corral`, `/run/corral`) is created with mode 0700; one that exists must be a real
  directory owned by the user that no one else can write in; otherwise another user could swap the socket and
  receive our `stop`. (Reading it is harmless: the socket itself is 0600.)
- Files named by options (`--certfile`, `--keyfile`, `--acme-ca-bundle`) must be readable files, `--app-dir`
  a directory, `--state-dir` a directory we can create and write.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from corral.errors import ConfigError, CorralError


def unusable(option: str, path: Path | str, exc: OSError) -> ConfigError:
    return ConfigError(f"{option} {path}: {exc.strerror or exc}")


def check_private_dir(directory: Path, create: bool) -> None:
    """`directory` is ours: created 0700 when missing (and `create`), else owned by us, writable by us alone."""
    if create:
        try:
            directory.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the runtime directory {directory}: {exc.strerror or exc}") from None
    try:
        info = os.lstat(directory)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"runtime directory {directory}: {exc.strerror or exc}") from None
    problem = None
    if not stat.S_ISDIR(info.st_mode):
        problem = "it is not a directory"
    elif info.st_uid != os.geteuid():
        problem = f"it belongs to uid {info.st_uid}, not to you (uid {os.geteuid()})"
    elif info.st_mode & 0o022:  # others could create or replace the socket (0755 from systemd is fine)
        problem = f"its mode {stat.S_IMODE(info.st_mode):04o} lets others write in it (0700 is expected)"
    if problem:
        raise ConfigError(
            f"refusing the runtime directory {directory}: {problem}; remove it, or give --control PATH"
        )


def prepare_control_path(path: Path, default: bool) -> None:
    """Make `path` free for a new control socket: its directory exists, a stale socket is removed."""
    from corral.control_client import socket_is_live

    if default:
        check_private_dir(path.parent, create=True)
    else:
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise unusable("--control", path, exc) from None
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise unusable("--control", path, exc) from None
    if not stat.S_ISSOCK(info.st_mode):
        raise ConfigError(f"--control {path}: exists and is not a socket; corral never replaces other files")
    if socket_is_live(path):
        raise CorralError(f"another corral instance is running with control socket {path} (use --name or --control)")
    try:
        path.unlink()
    except OSError as exc:
        raise unusable("--control", path, exc) from None


def check_readable_file(option: str, value: str | None) -> None:
    if value is None:
        return
    path = Path(value)
    try:
        info = path.stat()
    except OSError as exc:
        raise unusable(option, path, exc) from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{option} {path}: not a regular file")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{option} {path}: not readable")


def check_directory(option: str, value: str | None) -> None:
    if value is None:
        return
    path = Path(value)
    if not path.is_dir():
        raise ConfigError(f"{option} {path}: no such directory")


def check_state_dir(path: Path, option: str = "--state-dir") -> None:
    """The state directory exists (created 0700 when missing) and is a writable directory."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except FileExistsError:
        raise ConfigError(f"{option} {path}: exists and is not a directory") from None
    except OSError as exc:
        raise unusable(option, path, exc) from None
    if not path.is_dir():
        raise ConfigError(f"{option} {path}: not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path}: not writable")
