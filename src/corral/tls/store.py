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
import stat
from collections.abc import Iterator
from pathlib import Path

from corral import paths
from corral.errors import ConfigError
from corral.tls.certs import BadCertificate, Material, load_material


def default_state_dir(name: str = "corral") -> Path:
    """root: /var/lib/corral/NAME; others: $XDG_STATE_HOME/corral/NAME or ~/.local/state/corral/NAME."""
    if os.geteuid() == 0:
        return Path("/var/lib/corral") / name
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "corral" / name


class Store:
    """Paths and atomic writes under one state directory.

    Writes go through directory descriptors, never following a symbolic link (`paths.open_subdir`,
    `paths.replace_file`): what Corral creates here is given to `owner`; what exists is never changed.
    """

    def __init__(self, root: Path, owner: tuple[int, int] | None = None) -> None:
        self.root = root
        self.owner = owner  # (uid, gid) of the workers when they run as another user

    @contextlib.contextmanager
    def _directory(self, relative: Path) -> Iterator[int]:
        """A descriptor of `root/relative`, made (0700, given to `owner`) where missing."""
        root = paths.open_dir(self.root, "--state-dir", owner=self.owner, trusted=paths.trusted_owners(self.owner))
        try:
            fd = paths.open_subdir(root, relative.parts, self.root, self.owner)
        finally:
            os.close(root)
        try:
            yield fd
        finally:
            os.close(fd)

    def prepare(self) -> None:
        """Create the directories that are missing; an existing one is used as it is, or refused (ConfigError).

        With `owner`, the workers (running as that user) read certs/current and challenges: a state directory
        they could not enter, or such a directory of another owner, is refused rather than changed."""
        if self.owner is not None:
            root = os.stat(self.root)
            if root.st_uid != self.owner[0] and not root.st_mode & stat.S_IXOTH:
                raise ConfigError(f"--state-dir {self.root}: its mode {stat.S_IMODE(root.st_mode):04o} keeps the "
                                  f"workers (uid {self.owner[0]}) out; corral changes no existing mode: use a new "
                                  "--state-dir or chmod o+x it")
        for sub in ("certs/current", "challenges/http-01", "challenges/tls-alpn-01", "locks"):
            with self._directory(Path(sub)):
                pass
        for sub in ("certs", "certs/current", "challenges", "challenges/http-01", "challenges/tls-alpn-01"):
            uid = os.lstat(self.root / sub).st_uid
            if self.owner is not None and uid != self.owner[0]:
                raise ConfigError(f"--state-dir {self.root}: {sub} belongs to uid {uid}, so the workers "
                                  f"(uid {self.owner[0]}) cannot read it; corral changes no existing owner: "
                                  "use a new --state-dir or chown it")

    def write(self, path: Path, data: bytes, private: bool = False) -> None:
        """Atomically replace `path` (below the root); private files are 0600 from the start."""
        with self._directory(path.parent.relative_to(self.root)) as fd:
            paths.replace_file(fd, path.name, data, 0o600 if private else 0o644, path, self.owner)

    def remove(self, path: Path) -> None:
        """Remove a file Corral wrote (a challenge answer), through the same descriptors as `write`."""
        with contextlib.suppress(OSError, ConfigError), self._directory(path.parent.relative_to(self.root)) as fd:
            os.unlink(path.name, dir_fd=fd)

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
        with self._directory(Path("locks")) as directory:
            fd = paths.open_file(directory, path.name, os.O_RDWR | os.O_CREAT, path, self.owner)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
