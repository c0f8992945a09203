"""`corral export systemd`: a service unit (and with `--socket` a socket unit) running `corral run`.

The unit is `Type=notify`: the manager reports READY=1, STATUS=, STOPPING=1 and WATCHDOG=1
through `corral.manager.sd_notify`. Paths a hardened service may write to are systemd's own
RuntimeDirectory (the control socket) and StateDirectory (certificates, locks) unless the user
named others, which are then opened with ReadWritePaths.
"""

from __future__ import annotations

import math
import os
import pwd
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from secrets import token_urlsafe

from corral.binds import Bind, is_loopback, parse_admin_bind, parse_bind
from corral.config import Settings, run_arguments
from corral.errors import ConfigError, CorralError
from corral.export.common import PROJECT_FILES, ExportFile, inert, postgres_lock
from corral.tls.plan import http_binds

LIMIT_NOFILE = "65536"
WATCHDOG_SEC = 30
RESTART_SEC = 2
START_MARGIN = 90  # seconds to import the app and get the first generation ready
STOP_MARGIN = 15  # seconds past drain delay + graceful timeout before systemd kills what is left
ENV_DIR = "/etc/corral"
CREDENTIAL = "admin-token"  # the credential's name: the file in $CREDENTIALS_DIRECTORY

HARDENING = (
    ("NoNewPrivileges", "yes"),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "read-only"),
    ("PrivateTmp", "yes"),
    ("PrivateDevices", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("ProtectClock", "yes"),
    ("ProtectHostname", "yes"),
    ("RestrictSUIDSGID", "yes"),
    ("RestrictRealtime", "yes"),
    ("LockPersonality", "yes"),
    ("SystemCallArchitectures", "native"),
    ("UMask", "0027"),
)


@dataclass(frozen=True)
class SystemdOptions:
    working_directory: Path
    executable: str
    socket: bool = False


@dataclass(frozen=True)
class SystemdUnits:
    files: list[ExportFile]
    service: str  # unit names, for enabling
    socket: str | None
    control: str  # where `corral status --control` finds the instance
    env_file: str | None  # holds PGPASSWORD / CORRAL_ADMIN_TOKEN when there are such secrets
    password: str | None
    secrets: dict[str, str] = field(default_factory=dict)  # what the env file holds, for `corral install`
    credential: AdminCredential | None = None  # the admin token, given to the service by LoadCredential=


@dataclass(frozen=True)
class AdminCredential:
    source: str  # the file systemd reads: --admin-token-file, or ENV_DIR/NAME.admin-token
    token: str | None  # a token generated for that file (None: the user's file)


def _admin_credential(settings: Settings, workdir: Path, name: str) -> AdminCredential | None:
    """--admin-token-file, or a new token when --admin-bind is reachable from other machines without one (its
    /metrics would be served to nobody): a credential systemd reads, whatever the file's mode."""
    if not settings.admin_bind or settings.admin_token:
        return None
    if settings.admin_token_file:
        return AdminCredential(str((workdir / settings.admin_token_file).resolve()), None)
    if is_loopback(parse_admin_bind(settings.admin_bind)):
        return None
    return AdminCredential(f"{ENV_DIR}/{name}.admin-token", token_urlsafe(32))


def corral_executable() -> str:
    """The `corral` of the running environment (a venv's bin/), which is what the user ran."""
    beside = Path(sys.executable).parent / "corral"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("corral")
    if found:
        return str(Path(found).absolute())
    raise CorralError(f"cannot find the corral command beside {sys.executable} or on PATH")


def service_user(settings: Settings, environ: dict[str, str] | None = None) -> str | None:
    """--user, else whoever ran the export (the sudo caller under sudo); None for root: use DynamicUser."""
    env = os.environ if environ is None else environ
    if settings.user:
        return settings.user
    name = env.get("SUDO_USER") if os.geteuid() == 0 else None
    name = name or pwd.getpwuid(os.geteuid()).pw_name
    return None if name == "root" else name


def quote(arg: str) -> str:
    """One ExecStart= word: systemd expands %specifiers and $VARIABLES, and splits on spaces."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if arg and not re.search(r"[\s\"'\\;]", arg):
        return arg
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def unit_name(settings: Settings) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.\\-]+", settings.name) or settings.name.startswith("."):
        raise ConfigError(f"--name {settings.name!r} cannot name a systemd unit: use letters, digits, -_.")
    return settings.name


def render(
    settings: Settings, options: SystemdOptions, environ: dict[str, str] | None = None
) -> SystemdUnits:
    name = unit_name(settings)
    user = service_user(settings, environ)
    workdir = options.working_directory.resolve()
    directory = f"corral/{name}"  # under /run and /var/lib: apart from other instances
    changes: dict[str, object] = {"user": None, "group": None, "admin_token": None}
    writable: list[str] = []
    if settings.control:
        writable.append(str((workdir / settings.control).parent))
    else:
        changes["control"] = f"/run/{directory}/control.sock"
    if settings.state_dir:
        writable.append(str(workdir / settings.state_dir))
    else:
        changes["state_dir"] = f"/var/lib/{directory}"
    lock = settings.prestart_lock or ""
    postgres = postgres_lock(settings)
    if postgres is not None:
        changes["prestart_lock"] = postgres.url
    elif lock.startswith("file:"):
        writable.append(str((workdir / lock.removeprefix("file:")).parent))

    # What `corral run` listens on, defaults included (--https alone: 443, and 80 for HTTP-01).
    run = settings.options()
    binds = [parse_bind(text) for text in run.bind]
    if options.socket and any(bind.kind == "fd" for bind in binds):
        raise ConfigError("--socket makes systemd open the --bind addresses; fd:// cannot be one of them")
    bound_by_corral = [] if options.socket else list(binds)
    bound_by_corral += [parse_bind(text) for text in http_binds(run)]
    if settings.admin_bind:
        bound_by_corral.append(parse_bind(settings.admin_bind))
    writable += [str((workdir / bind.path).parent) for bind in bound_by_corral if bind.kind == "unix"]
    log_dirs: list[str] = []
    if settings.log_config:  # the directories of its log files, in a file system the hardening makes read-only
        from corral.export.shipped import log_files

        opened = log_files(str(workdir / settings.log_config)).values()
        log_dirs = [os.path.normpath(workdir / name / "..") for name in opened]
    writable += log_dirs
    low_ports = any(bind.kind == "tcp" and 0 < bind.port < 1024 for bind in bound_by_corral)

    env_files = [str((workdir / path).resolve()) for path in settings.env_file]
    hardening = _hardening(user, settings, workdir, options.executable, [*env_files, *log_dirs])
    credential = _admin_credential(settings, workdir, name)
    if credential is not None:
        changes["admin_token_file"] = None  # given below as systemd's credential
    adapted = inert(settings.model_copy(update=changes))  # --env-file: EnvironmentFile= below
    exec_start = " ".join(quote(arg) for arg in [options.executable, "run", *run_arguments(adapted)])
    if credential is not None:
        exec_start += f" --admin-token-file %d/{CREDENTIAL}"  # %d: the service's credentials directory
    control = str(adapted.control)
    secrets = {"PGPASSWORD": postgres.password} if postgres is not None and postgres.password else {}
    if settings.admin_token:
        secrets["CORRAL_ADMIN_TOKEN"] = settings.admin_token
    env_file = f"{ENV_DIR}/{name}.env" if secrets else None

    description = f"corral: {settings.app or 'ASGI app'} ({name})".replace("%", "%%")
    unit: list[tuple[str, str]] = [("Description", description)]
    unit += [("Wants", "network-online.target"), ("After", "network-online.target")]
    if postgres is not None and postgres.host in ("localhost", "127.0.0.1", "::1", None):
        unit.append(("After", "postgresql.service"))
    if options.socket:
        unit += [("Requires", f"{name}.socket"), ("After", f"{name}.socket")]

    service: list[tuple[str, str]] = [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("ExecStart", exec_start),
        ("ExecReload", f"{quote(options.executable)} reload --control {quote(control)}"),
        ("WorkingDirectory", quote(str(workdir))),
        ("Environment", "PYTHONUNBUFFERED=1"),
    ]
    # Read by systemd itself (as root) before the service starts: the file may stay mode 0600.
    service += [("EnvironmentFile", quote(path)) for path in env_files]
    if env_file:
        service.append(("EnvironmentFile", env_file))
    if credential is not None:
        # Read by systemd as root, handed to the service in a directory only it can read.
        service.append(("LoadCredential", f"{CREDENTIAL}:{quote(credential.source)}"))
    service += [("User", user)] if user else [("DynamicUser", "yes")]
    if settings.group:
        service.append(("Group", settings.group))
    if not settings.control:
        service.append(("RuntimeDirectory", directory))
    if not settings.state_dir:
        service += [("StateDirectory", directory), ("StateDirectoryMode", "0750")]
    service += [("ReadWritePaths", quote(path)) for path in dict.fromkeys(writable)]
    start_timeout = START_MARGIN + len(settings.prestart) * settings.prestart_timeout
    stop_timeout = settings.drain_delay + settings.graceful_timeout + STOP_MARGIN
    service += [
        ("TimeoutStartSec", str(math.ceil(start_timeout))),
        ("TimeoutStopSec", str(math.ceil(stop_timeout))),
        ("WatchdogSec", str(WATCHDOG_SEC)),
        ("LimitNOFILE", LIMIT_NOFILE),  # room for every worker's connections; the manager uses the hard limit
        ("Restart", "on-failure"),
        ("RestartSec", str(RESTART_SEC)),
        ("RestartPreventExitStatus", "2"),
        ("KillMode", "mixed"),
        *hardening,
    ]
    if low_ports:
        service += [
            ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
            ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ]
    else:
        service.append(("CapabilityBoundingSet", ""))

    files = [
        ExportFile(
            f"{name}.service",
            _unit_text(
                f"Written by corral export systemd. Status: corral status --control {control}",
                [("Unit", unit), ("Service", service), ("Install", [("WantedBy", "multi-user.target")])],
            ),
        )
    ]
    if options.socket:
        files.append(ExportFile(f"{name}.socket", _socket_unit(name, binds)))
    if credential is not None and credential.token is not None:
        files.append(ExportFile(Path(credential.source).name, "", mode=0o600, data=f"{credential.token}\n".encode()))
    return SystemdUnits(
        files=files,
        service=f"{name}.service",
        socket=f"{name}.socket" if options.socket else None,
        control=control,
        env_file=env_file,
        password=postgres.password if postgres is not None else None,
        secrets=secrets,
        credential=credential,
    )


def _hardening(
    user: str | None, settings: Settings, workdir: Path, executable: str, outside: list[str]
) -> list[tuple[str, str]]:
    """HARDENING, checked against what the service must read: its directory, the app, the virtual
    environment and its interpreter, the files its options name. A private /tmp hides a project, or
    `outside` (env files, which systemd reads, and the directories of --log-config's log files), under /tmp; a
    dynamic user reads only what every user may read. Adapted where it can be, else one line."""
    needed = [workdir, Path(executable), Path(sys.prefix), Path(sys.executable).resolve()]
    if settings.app_dir:
        needed.append(workdir / settings.app_dir)
    needed += [workdir / value for name in PROJECT_FILES if (value := getattr(settings, name))]
    in_tmp = [path for path in [*needed, *map(Path, outside)] if _under_tmp(path)]
    hardening = list(HARDENING)
    if in_tmp:
        if user is None:
            raise ConfigError(
                f"{in_tmp[0]} is under a temporary directory, which a DynamicUser= service sees empty "
                "(private /tmp): move the project and its venv elsewhere, or give --user"
            )
        hardening = [(key, "no" if key == "PrivateTmp" else value) for key, value in hardening]
    for path in needed:
        blocked = _unreadable_part(path, user)
        if blocked is not None:
            who = f"user {user}" if user else "the service's dynamic user (DynamicUser=yes)"
            raise ConfigError(
                f"{path} is not readable by {who}: {blocked} is mode {blocked.stat().st_mode & 0o777:o}; "
                "give --user with access to it, or move the project and its venv (e.g. under /srv)"
            )
    return hardening


def _under_tmp(path: Path) -> bool:
    resolved = path.resolve()
    return any(resolved.is_relative_to(tmp) for tmp in (Path("/tmp"), Path("/var/tmp")))


def _unreadable_part(path: Path, user: str | None) -> Path | None:
    """The first directory (or the file) on `path` that `user` (None: any user) cannot get through."""
    import grp

    uid, gids = -1, set()
    if user is not None:
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            return None  # a user of the target host: cannot check here
        uid = entry.pw_uid
        gids = {entry.pw_gid} | {group.gr_gid for group in grp.getgrall() if user in group.gr_mem}
    if uid == 0:
        return None
    resolved = path.resolve()
    for part in [*reversed(resolved.parents), resolved]:
        try:
            info = part.stat()
        except OSError:
            return None
        need = 0o1 if part != resolved else 0o5 if part.is_dir() else 0o4
        if info.st_uid == uid:
            bits = info.st_mode >> 6
        elif info.st_gid in gids:
            bits = info.st_mode >> 3
        else:
            bits = info.st_mode
        if bits & need != need:
            return part
    return None


def _socket_unit(name: str, binds: list[Bind]) -> str:
    socket: list[tuple[str, str]] = []
    for bind in binds:
        if bind.kind == "unix":
            socket.append(("ListenStream", quote(bind.path)))
        else:
            socket.append(("ListenStream", str(bind)))
    if any(bind.kind == "tcp" and ":" in bind.host for bind in binds):
        socket.append(("BindIPv6Only", "ipv6-only"))
    if any(bind.kind == "unix" for bind in binds):
        socket.append(("SocketMode", "0666"))
    socket.append(("Backlog", "2048"))
    return _unit_text(
        "sockets opened by systemd and handed to corral (socket activation)",
        [
            ("Unit", [("Description", f"corral sockets ({name})")]),
            ("Socket", socket),
            ("Install", [("WantedBy", "sockets.target")]),
        ],
    )


def _unit_text(comment: str, sections: list[tuple[str, list[tuple[str, str]]]]) -> str:
    lines = [f"# {comment}"]
    for title, entries in sections:
        lines += ["", f"[{title}]"] + [f"{key}={value}" for key, value in entries]
    return "\n".join(lines) + "\n"
