"""`corral install`: write the systemd units of `corral export systemd` and enable them.

On a host where systemd runs: into /etc/systemd/system, then `daemon-reload` and `enable`
(`--now` starts it). With `--root DIR` (an image being built, a mounted disk): into DIR with
`systemctl --root`, which needs no running systemd. Anywhere else it says what to do instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from corral import paths
from corral.errors import CorralError
from corral.export.systemd import SystemdUnits

UNIT_DIR = Path("etc/systemd/system")


def systemd_running() -> bool:
    """What sd_booted(3) checks: systemd creates this directory when it is PID 1."""
    return Path("/run/systemd/system").is_dir()


def install(units: SystemdUnits, root: Path | None = None, now: bool = True) -> list[str]:
    """Write and enable the units; return what to tell the user."""
    systemctl = shutil.which("systemctl")
    if root is None:
        if not systemd_running():
            raise CorralError(
                "systemd is not running here, so there is nothing to install into: "
                "on a systemd host run 'corral install' there, or write the unit with "
                "'corral export systemd --out DIR'; for containers use 'corral export docker'"
            )
        if os.geteuid() != 0:
            raise CorralError("installing a system service needs root: run it with sudo")
    if systemctl is None:
        raise CorralError("systemctl not found: is systemd installed?")
    base = root if root is not None else Path("/")
    unit_dir = base / UNIT_DIR
    unit_files = [file for file in units.files if file.name.endswith((".service", ".socket"))]
    written = [_write(unit_dir / file.name, file.content, file.mode) for file in unit_files]
    if units.env_file and units.secrets:
        content = "".join(f"{key}={value}\n" for key, value in units.secrets.items())
        written.append(_write(base / units.env_file.lstrip("/"), content, 0o600))
    credential = units.credential
    if credential is not None and credential.token is not None:
        path = base / credential.source.lstrip("/")
        if not (path.exists() or path.is_symlink()):  # kept: a Prometheus may already scrape with it
            written.append(_write(path, f"{credential.token}\n", 0o600))
    enable = [u for u in (units.socket, units.service) if u]
    if root is not None:
        _systemctl([systemctl, f"--root={root}", "enable", *enable])
        return [f"wrote {path}" for path in written] + [f"enabled {' '.join(enable)} in {root}"]
    _systemctl([systemctl, "daemon-reload"])
    _systemctl([systemctl, "enable", *(["--now"] if now else []), *enable])
    name = units.service.removesuffix(".service")
    return [f"wrote {path}" for path in written] + [
        f"{'enabled and started' if now else 'enabled'} {' '.join(enable)}",
        f"  state:   systemctl status {name}",
        f"  logs:    journalctl -u {name} -f",
        f"  workers: corral status --control {units.control}",
    ]


def _write(path: Path, content: str, mode: int) -> Path:
    """Created with its mode from the start (the env file holds a password) and renamed in: never written
    through a symbolic link, never into another user's file or a directory others can write in."""
    try:
        directory = paths.open_dir(path.parent, "cannot write into", mode=0o755)
        try:
            paths.replace_file(directory, path.name, content.encode(), mode, path)
        finally:
            os.close(directory)
    except OSError as exc:
        raise CorralError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def _systemctl(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        cause = lines[-1] if lines else f"exit code {result.returncode}"
        raise CorralError(f"{' '.join(command[1:])} failed: {cause}")
