"""The state directory: where keys, certificates, the ACME account and challenge answers live.

Layout (`STATE` is `--state-dir`)::

    STATE/ca/root.pem, root.key          local CA (key 0600)
    STATE/acme/<server>/account.key      ACME account key (0600)
    STATE/certs/<label>/cert.pem, key.pem  issued material, as obtained (key 0600)
    STATE/certs/current/<label>.pem      validated key + chain that workers load (0600)
    STATE/challenges/http-01/<token>     HTTP-01 answers served by the workers
    STATE/challenges/tls-alpn-01/<name>.pem  TLS-ALPN-01 challenge certificates (0600)
    STATE/locks/<label>.lock             held while ordering, shared by Corral instances
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from corral.tls.certs import BadCertificate, Material, load_material


def default_state_dir(name: str = "corral") -> Path:
    """root: /var/lib/corral/NAME; others: $XDG_STATE_HOME/corral/NAME or ~/.local/state/corral/NAME."""
    if os.geteuid() == 0:
        return Path("/var/lib/corral") / name
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "corral" / name


def write_file(path: Path, data: bytes, private: bool = False, owner: tuple[int, int] | None = None) -> None:
    """Atomically replace `path`; private files are created 0600 (never readable by others, even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600 if private else 0o644)
        if owner is not None:
            os.fchown(fd, *owner)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class Store:
    """Paths and atomic reads/writes under one state directory."""

    def __init__(self, root: Path, owner: tuple[int, int] | None = None) -> None:
        self.root = root
        self.owner = owner  # (uid, gid) of the workers when they run as another user

    def prepare(self) -> None:
        """Create the directories; when workers run as another user, give them the whole tree."""
        for sub in ("certs/current", "challenges/http-01", "challenges/tls-alpn-01", "locks"):
            (self.root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        self.root.chmod(0o700)
        if self.owner is not None:
            for dirpath, dirnames, filenames in os.walk(self.root):
                os.chown(dirpath, *self.owner)
                for item in dirnames + filenames:
                    os.chown(os.path.join(dirpath, item), *self.owner, follow_symlinks=False)

    def write(self, path: Path, data: bytes, private: bool = False) -> None:
        if not path.parent.is_dir():
            path.parent.mkdir(parents=True, mode=0o700)
            if self.owner is not None:
                os.chown(path.parent, *self.owner)
        write_file(path, data, private=private, owner=self.owner)

    # issued material, per label ("acme", "local", "files")
    def issued_dir(self, label: str) -> Path:
        return self.root / "certs" / label

    def save_issued(self, label: str, material: Material) -> None:
        self.write(self.issued_dir(label) / "key.pem", material.key_pem, private=True)
        self.write(self.issued_dir(label) / "cert.pem", material.chain_pem)

    def load_issued(self, label: str, names: list[str] | None = None) -> Material | None:
        """The stored material for `label` if it is readable, matching and unexpired."""
        try:
            chain = (self.issued_dir(label) / "cert.pem").read_bytes()
            key = (self.issued_dir(label) / "key.pem").read_bytes()
            return load_material(chain, key, names=names)
        except (OSError, BadCertificate):
            return None

    # what workers load
    def current_path(self, label: str) -> Path:
        return self.root / "certs" / "current" / f"{label}.pem"

    def publish(self, label: str, material: Material) -> None:
        self.write(self.current_path(label), material.combined_pem(), private=True)

    # challenge answers
    def http01_path(self, token: str) -> Path:
        return self.root / "challenges" / "http-01" / token

    def tls_alpn01_path(self, name: str) -> Path:
        return self.root / "challenges" / "tls-alpn-01" / f"{name}.pem"

    @contextlib.contextmanager
    def lock(self, label: str) -> Iterator[None]:
        """An exclusive inter-process lock (flock): one Corral orders `label` at a time."""
        path = self.root / "locks" / f"{label}.lock"
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
