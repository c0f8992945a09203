"""`corral trust`: where the local CA's root is and how to trust it; installs it into the system store."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from corral.errors import CorralError
from corral.tls.localca import LocalCA
from corral.tls.store import Store

DEBIAN_ANCHORS = Path("/usr/local/share/ca-certificates")
REDHAT_ANCHORS = Path("/etc/pki/ca-trust/source/anchors")


def root_certificate(state_dir: Path) -> Path:
    """The local CA's root, created if it does not exist yet (so it can be trusted before first use)."""
    store = Store(state_dir)
    store.prepare()
    ca = LocalCA(store)
    ca.root()
    return ca.root_path


def instructions(root: Path, name: str) -> str:
    return "\n".join(
        [
            f"Local CA root certificate: {root}",
            "Trust it:",
            "  this machine: corral trust --install  (as root; copies it into the system anchors",
            f"                {DEBIAN_ANCHORS} and runs update-ca-certificates, or update-ca-trust)",
            f"  curl:   curl --cacert {root} https://localhost:8443/",
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
