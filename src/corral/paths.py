"""Paths Corral writes or reads, checked before use: an unusable one is one line and exit 2, never a traceback.

- The control socket replaces only a stale *socket*: a regular file, a directory or a symlink at `--control`
  is never removed.
- The per-user runtime directory that holds default control sockets (`/tmp/corral-UID`,
  `$XDG_RUNTIME_DIR/corral`, `/run/corral`) is created with mode 0700; one that exists must be a real
  directory owned by the user that no one else can write in; otherwise another user could swap the socket and
  receive our `stop`. (Reading it is harmless: the socket itself is 0600.)
- Files named by options (`--certfile`, `--keyfile`, `--acme-ca-bundle`) must be readable files, `--app-dir`
  a directory.
- A directory Corral writes in (`--state-dir`, the directory of `--control`, an export's `--out`) is created
  when missing (and only then given to `--user`); one that exists is used as it is only if it is safe: a real
  directory (never followed through a symbolic link), owned by us or root, that others cannot write in.
  Corral never changes an existing directory's mode or owner. Files are written through directory
  descriptors opened with `O_NOFOLLOW`, into a new file renamed over the old one: a symbolic link planted at
  a file's name is refused, never followed.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections.abc import Collection, Sequence
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
    if default:
        check_private_dir(path.parent, create=True)
    else:  # an existing directory such as /tmp (sticky: no one else can replace our socket) is fine
        os.close(open_dir(path.parent, f"--control {path}: its directory", sticky_ok=True))
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise unusable("--control", path, exc) from None
    if not stat.S_ISSOCK(info.st_mode):
        raise ConfigError(f"--control {path}: exists and is not a socket; corral never replaces other files")
    if info.st_uid != os.geteuid():
        raise ConfigError(f"--control {path}: a socket of uid {info.st_uid}, not yours; corral never removes it")
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


def socket_is_live(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def check_state_dir(path: Path, option: str = "--state-dir", owner: tuple[int, int] | None = None) -> None:
    """The state directory is safe to use (created 0700 when missing, given to `owner` only then)."""
    os.close(open_dir(path, option, owner=owner, trusted=trusted_owners(owner)))


# --- directories and files Corral writes -------------------------------------------------------------------

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def trusted_owners(owner: tuple[int, int] | None) -> frozenset[int]:
    """Who may own a directory we write in: us, root, and the `--user` we give what we create."""
    return frozenset({os.geteuid(), 0} | ({owner[0]} if owner else set()))


def unsafe_dir(
    info: os.stat_result, trusted: Collection[int], others: int = 0o022, sticky_ok: bool = False
) -> str | None:
    """Why an existing directory (its lstat) is not one Corral may write in, or None."""
    if stat.S_ISLNK(info.st_mode):
        return "it is a symbolic link (corral never follows one to write)"
    if not stat.S_ISDIR(info.st_mode):
        return "it exists and is not a directory"
    if info.st_uid not in trusted:
        return f"it belongs to uid {info.st_uid}, not to you (uid {os.geteuid()}) or root"
    if info.st_mode & others and not (sticky_ok and info.st_mode & stat.S_ISVTX):
        return f"its mode {stat.S_IMODE(info.st_mode):04o} lets others write in it"
    return None


def open_dir(
    path: Path,
    option: str,
    owner: tuple[int, int] | None = None,
    trusted: Collection[int] | None = None,
    others: int = 0o022,
    sticky_ok: bool = False,
    mode: int = 0o700,
    create: bool = True,
) -> int:
    """A descriptor of the directory `path`, created with `mode` (its missing parents as `mkdir -p` makes them)
    and given to `owner` when missing; an existing one must pass `unsafe_dir` and is never changed. Without
    `create`, a missing one is the OSError of opening it."""
    trusted = trusted_owners(None) if trusted is None else trusted
    created = False
    try:
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(path, mode)
            created = True
    except FileExistsError:
        pass
    except OSError as exc:
        raise unusable(option, path, exc) from None
    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError as exc:
        if not create and _lstat(path) is None:
            raise
        raise _refused(f"{option} {path}", _lstat(path), trusted, exc) from None
    try:
        _adopt(fd, f"{option} {path}", created, owner, trusted, others, sticky_ok)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _refused(where: str, info: os.stat_result | None, trusted: Collection[int], exc: OSError) -> ConfigError:
    """Why a directory could not be opened: what is wrong with it if anything, else the system's reason."""
    problem = unsafe_dir(info, trusted) if info is not None else None
    return ConfigError(f"{where}: {problem or exc.strerror or exc}; refusing it")


def _adopt(
    fd: int,
    where: str,
    created: bool,
    owner: tuple[int, int] | None,
    trusted: Collection[int],
    others: int = 0o022,
    sticky_ok: bool = False,
) -> None:
    """Check an opened directory, and give one Corral just made to `owner` (the only change it ever makes)."""
    info = os.fstat(fd)  # one we made is ours whatever the umask left of its mode
    problem = unsafe_dir(info, {os.geteuid()}, 0) if created else unsafe_dir(info, trusted, others, sticky_ok)
    if problem:
        raise ConfigError(f"{where}: {problem}; refusing it")
    if created and owner is not None:
        os.fchown(fd, *owner)


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None


def open_subdir(
    dir_fd: int, parts: Sequence[str], shown: Path, owner: tuple[int, int] | None = None, create: bool = True
) -> int:
    """Walk `parts` below `dir_fd` without following a symbolic link, creating what is missing (0700, given
    to `owner`); an existing part must be a directory of a trusted owner that others cannot write in."""
    trusted = trusted_owners(owner)
    fd = os.dup(dir_fd)
    try:
        for index, name in enumerate(parts):
            created = False
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o700, dir_fd=fd)
                    created = True
            where = str(shown.joinpath(*parts[: index + 1]))
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise _refused(where, _stat_at(fd, name), trusted, exc) from None
            os.close(fd)
            fd = child
            _adopt(fd, where, created, owner, trusted)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _stat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return None


def replace_file(
    dir_fd: int,
    name: str,
    data: bytes,
    mode: int,
    shown: Path,
    owner: tuple[int, int] | None = None,
) -> None:
    """Atomically put `data` at `name` in `dir_fd`: a new file with its mode (and owner) from the start, renamed
    over the old one. What is at `name` must be a regular file of a trusted owner: never a symbolic link
    (it is replaced, not followed, but refusing says why), a directory or another user's file."""
    info = _stat_at(dir_fd, name)
    if info is not None:
        if not stat.S_ISREG(info.st_mode):
            kind = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a regular file"
            raise ConfigError(f"{shown}: exists and is {kind}; corral never replaces it")
        if info.st_uid not in trusted_owners(owner):
            raise ConfigError(f"{shown}: belongs to uid {info.st_uid}, not to you (uid {os.geteuid()}); "
                              "corral never replaces it")
    temporary = f".{name}.{os.urandom(4).hex()}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                 dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(fd, mode)
            if owner is not None:
                os.fchown(fd, *owner)
            file.write(data)
            file.flush()
            os.fsync(fd)
        os.rename(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=dir_fd)
        raise


def open_file(dir_fd: int, name: str, flags: int, shown: Path, owner: tuple[int, int] | None = None) -> int:
    """Open (or create, 0600) a regular file in `dir_fd` without following a symbolic link at `name`."""
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    except OSError as exc:
        info = _stat_at(dir_fd, name)
        if info is not None and stat.S_ISLNK(info.st_mode):
            raise ConfigError(f"{shown}: exists and is a symbolic link; corral never follows it") from None
        raise ConfigError(f"{shown}: {exc.strerror or exc}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid not in trusted_owners(owner):
        os.close(fd)
        raise ConfigError(f"{shown}: not a regular file of yours; corral never writes in it")
    return fd
