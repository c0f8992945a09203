"""Dropping root after binding ports 80/443: the template calls this before importing any app code."""

from __future__ import annotations

import grp
import os
import pwd

from corral.errors import ConfigError, CorralError


def resolve_owner(user: str | None, group: str | None) -> tuple[int, int] | None:
    """(uid, gid) of `--user`/`--group` (names or numbers), None when neither is given."""
    if user is None and group is None:
        return None
    try:
        entry = pwd.getpwnam(user) if user and not user.isdigit() else pwd.getpwuid(int(user or os.getuid()))
    except KeyError as exc:
        raise ConfigError(f"--user {user}: no such user") from exc
    gid = entry.pw_gid
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid if not group.isdigit() else int(group)
        except KeyError as exc:
            raise ConfigError(f"--group {group}: no such group") from exc
    return entry.pw_uid, gid


def check_owner(user: str | None, group: str | None) -> None:
    """At startup, before anything is forked: `--user`/`--group` exist, and can be taken (root only)."""
    owner = resolve_owner(user, group)
    if owner is None or os.geteuid() == 0:
        return
    if owner != (os.getuid(), os.getgid()):
        given = " ".join(f"--{name} {value}" for name, value in (("user", user), ("group", group)) if value)
        raise ConfigError(f"{given}: corral must be started as root to change user or group")


def drop_privileges(user: str | None, group: str | None) -> None:
    """Become `user` (and `group`, default: the user's primary group) for good: supplementary groups,
    then gid, then uid. A no-op without --user/--group; an error when not root and a change is needed."""
    owner = resolve_owner(user, group)
    if owner is None:
        return
    uid, gid = owner
    if (os.getuid(), os.getgid()) == (uid, gid) and os.geteuid() == uid:
        return
    if os.geteuid() != 0:
        raise CorralError("--user/--group need corral to be started as root")
    name = pwd.getpwuid(uid).pw_name if user else None
    if name is not None:
        os.initgroups(name, gid)
    else:
        os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.geteuid() != uid or os.getegid() != gid:
        raise CorralError(f"could not drop privileges to uid {uid}, gid {gid}")
    os.environ["HOME"] = pwd.getpwuid(uid).pw_dir
