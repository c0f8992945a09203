"""`corral run --log-config` where the file and its log files are not everyone's: as a container or a service
user runs it. The workers use the configuration the template applied (read, and its files opened, before
privileges are dropped); a configuration that cannot be applied is one line that names why, and exit 2."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import OK_APP, Corral, run_cli, wait_for, write_app


def log_config(access_log: str) -> dict[str, object]:
    """Corral's lines in a format of the config's own, and the access lines into `access_log` too."""
    return {
        "version": 1,
        "formatters": {"tagged": {"format": "CONFIGURED %(name)s %(message)s"}},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "tagged"},
            "file": {"class": "logging.FileHandler", "filename": access_log, "formatter": "tagged"},
        },
        "loggers": {
            "corral": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "corral.access": {"handlers": ["stderr", "file"], "level": "INFO", "propagate": False},
        },
    }


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another user can enter (pytest's own are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="corral-logcfg-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root (CI runs as root)")
def test_a_log_config_only_root_reads_serves_as_the_service_user(corrals: list[Corral], shared_dir: Path) -> None:
    """Mode 0600, root's, as a file copied into an image built as root; its log file root's too: the workers,
    which run as nobody, neither read it again nor reopen the log file, and log through both."""
    write_app(shared_dir, OK_APP)
    access_log = shared_dir / "access.log"
    config = shared_dir / "logging.json"
    config.write_text(json.dumps(log_config(str(access_log))))
    config.chmod(0o600)
    corral = Corral(shared_dir, "app.py", "-w", "2", "--log-config", "logging.json", "--user", "nobody")
    corrals.append(corral)
    corral.wait_ready(2)
    assert corral.get("/configured").text == "ok"
    line = wait_for(lambda: access_log.exists() and access_log.read_text(), what="the access line in the file")
    assert line.startswith("CONFIGURED corral.access ") and "GET /configured" in line, line
    assert access_log.stat().st_uid == 0, "opened once, by the template before it dropped privileges"
    wait_for(lambda: "CONFIGURED corral.access " in corral.log, what="the access line on stderr")
    assert "CONFIGURED corral " in corral.log and "Traceback" not in corral.log, corral.log


def test_a_log_file_the_config_cannot_open_is_one_line_that_says_why(tmp_path: Path) -> None:
    write_app(tmp_path, OK_APP)
    missing = tmp_path / "no-such-directory" / "access.log"
    (tmp_path / "logging.json").write_text(json.dumps(log_config(str(missing))))
    result = run_cli("run", "app.py", "--log-config", "logging.json", "--control", str(tmp_path / "c.sock"),
                     cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("corral: --log-config logging.json: Unable to configure handler 'file': ")
    assert f"No such file or directory: '{missing}'" in result.stderr, result.stderr
