"""`corral trust`: where the local CA's root is and how to trust it; installs it into the system store."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from corral.control_client import default_control_path, request
from corral.errors import ConfigError, CorralError
from corral.tls.store import default_state_dir

DEBIAN_ANCHORS = Path("/usr/local/share/ca-certificates")
REDHAT_ANCHORS = Path("/etc/pki/ca-trust/source/anchors")


@dataclass(frozen=True)
class KnownCA:
    """A local CA on this machine: the instance name that uses it, its state directory, whether it runs."""

    name: str
    state_dir: Path
    running: bool

    @property
    def root(self) -> Path:
        return self.state_dir / "ca" / "root.pem"

    def describe(self) -> str:
        return f"{self.name} ({self.state_dir}{', running' if self.running else ''})"


def running_instances(control_dir: Path) -> list[KnownCA]:
    """Instances answering on the control sockets of `control_dir`, with the state directory each uses."""
    found = []
    for path in sorted(control_dir.glob("*.sock")) if control_dir.is_dir() else []:
        try:
            answer = request(path, {"cmd": "status"}, timeout=5.0)
        except (CorralError, OSError, ValueError):
            continue
        state_dir = answer.get("state_dir")
        if answer.get("ok") and state_dir:
            found.append(KnownCA(str(answer.get("name") or path.stem), Path(state_dir), True))
    return found


def known_cas(control_dir: Path, state_base: Path, extra: list[KnownCA] | None = None) -> list[KnownCA]:
    """Every local CA that exists: those of running instances first, then the default state directories."""
    found: dict[Path, KnownCA] = {}
    candidates = running_instances(control_dir) + [
        KnownCA(root.parent.parent.name, root.parent.parent, False)
        for root in sorted(state_base.glob("*/ca/root.pem"))
    ]
    for ca in candidates + (extra or []):
        if ca.root.is_file() and ca.state_dir.resolve() not in found:
            found[ca.state_dir.resolve()] = ca
    return list(found.values())


def find_ca(state_dir: Path | None, name: str | None) -> KnownCA:
    """The CA to trust: --state-dir's, --name's, the running instance's, or the only one on this machine.

    Never creates a CA: a root that does not exist yet would not be the one any server uses."""
    if state_dir is not None:
        ca = KnownCA(name or "corral", state_dir, False)
        if not ca.root.is_file():
            raise CorralError(
                f"no local CA in {state_dir} yet: it is created when `corral run --https localhost "
                f"--state-dir {state_dir}` first starts"
            )
        return ca
    control_dir = default_control_path("corral").parent
    state_base = default_state_dir("corral").parent
    cas = known_cas(control_dir, state_base)
    if name is not None:
        cas = [ca for ca in cas if ca.name == name]
        if not cas:
            raise CorralError(
                f"no local CA for --name {name}: it is created when `corral run --https localhost "
                f"--name {name}` first starts (or give --state-dir)"
            )
        return cas[0]
    if not cas:
        raise CorralError(
            f"no local CA found (no running instance with one, none in {state_base}): start "
            "`corral run --https localhost` first, or give --name or --state-dir"
        )
    running = [ca for ca in cas if ca.running]
    if len(running) == 1:
        return running[0]  # the instance being served now, whatever older state directories remain
    if running:
        cas = running
    if len(cas) > 1:
        raise ConfigError(
            f"{len(cas)} local CAs: {'; '.join(ca.describe() for ca in cas)}; "
            f"choose one with --name (for example: corral trust --name {cas[0].name})"
        )
    return cas[0]


def instructions(root: Path) -> str:
    return "\n".join(
        [
            f"Local CA root certificate: {root}",
            "Trust it:",
            "  this machine: corral trust --install  (as root; copies it into the system anchors",
            f"                {DEBIAN_ANCHORS} and runs update-ca-certificates, or update-ca-trust)",
            f"  curl:   curl --cacert {root} https://127.0.0.1:PORT/  (the URL corral run's banner shows)",
            f"  Python: httpx.get(url, verify=ssl.create_default_context(cafile='{root}'))",
            f"  Node:   NODE_EXTRA_CA_CERTS={root}",
            "  Firefox (own store): Settings > Privacy & Security > Certificates > Authorities > Import",
        ]
    )


def install(root: Path, name: str) -> str:
    """Copy the root into the system anchors and refresh the store; returns what was done."""
    if shutil.which("update-ca-certificates") and DEBIAN_ANCHORS.parent.is_dir():
        target, command = DEBIAN_ANCHORS / f"{name}.crt", ["update-ca-certificates"]
    elif shutil.which("update-ca-trust") and REDHAT_ANCHORS.is_dir():
        target, command = REDHAT_ANCHORS / f"{name}.pem", ["update-ca-trust", "extract"]
    else:
        raise CorralError("no system trust store tool found (update-ca-certificates or update-ca-trust)")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root, target)
    except PermissionError as exc:
        raise CorralError(f"cannot write {target}: run 'corral trust --install' as root") from exc
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise CorralError(f"{command[0]} failed: {lines[-1] if lines else result.returncode}")
    return f"installed {root} as {target} ({command[0]} done)"
