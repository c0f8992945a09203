"""`corral trust` through the real CLI, and dropping privileges in a real process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from corral.tls.localca import LocalCA
from corral.tls.store import Store
from harness import run_cli


def test_trust_shows_the_root(tmp_path: Path) -> None:
    state = tmp_path / "state"
    missing = run_cli("trust", "--state-dir", str(state))
    assert missing.returncode == 1 and f"no local CA in {state} yet" in missing.stderr
    assert not state.exists()  # never created by corral trust: it would not be the CA a server uses
    store = Store(state)
    store.prepare()
    LocalCA(store).root()
    result = run_cli("trust", "--state-dir", str(state))
    assert result.returncode == 0, result.stderr
    root = tmp_path / "state/ca/root.pem"
    assert f"Local CA root certificate: {root}" in result.stdout
    assert root.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert (tmp_path / "state/ca/root.key").stat().st_mode & 0o777 == 0o600
    again = run_cli("trust", "--state-dir", str(state))
    assert again.stdout == result.stdout  # the same root


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_drop_privileges_to_nobody(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import os
        from corral.privileges import drop_privileges
        drop_privileges("nobody", None)
        print(os.getuid(), os.geteuid(), os.getgid(), os.getgroups())
        try:
            os.setuid(0)
        except PermissionError:
            print("cannot regain root")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    import pwd

    nobody = pwd.getpwnam("nobody")
    first, second = result.stdout.splitlines()
    uid, euid, gid = (int(x) for x in first.split()[:3])
    assert (uid, euid, gid) == (nobody.pw_uid, nobody.pw_uid, nobody.pw_gid)
    assert second == "cannot regain root"


def test_unknown_user_is_one_line(tmp_path: Path) -> None:
    script = "from corral.privileges import drop_privileges; drop_privileges('no-such-user-xyz', None)"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode != 0
    assert "--user no-such-user-xyz: no such user" in result.stderr
