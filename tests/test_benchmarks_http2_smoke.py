"""benchmarks/http2.py and benchmarks/http2_floods.py end to end on Corral alone, tiny, so the scripts cannot rot;
and the one line a missing tool gives."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"

needs_h2load = pytest.mark.skipif(not shutil.which("h2load") or not shutil.which("curl"),
                                  reason="needs h2load (nghttp2-client) and curl")


@needs_h2load
def test_http2_throughput_of_corral_over_h2c_and_http11() -> None:
    argv = [sys.executable, str(BENCH / "http2.py"), "--loads", "corral,corral-h1", "--app", "raw", "--workers", "1",
            "--rounds", "1", "--seconds", "1"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in done.stdout.splitlines()
            if line.startswith("| corral")}
    assert set(rows) == {"corral", "corral-h1"}, done.stdout
    for cells in rows.values():
        assert float(cells[1].split(" ")[0].replace(",", "")) > 0  # requests per CPU-second
        assert cells[4] == "0"  # failed
    assert "corral / corral-h1, per round: " in done.stdout


@needs_h2load
def test_http2_floods_against_corral_end_with_goaway() -> None:
    argv = [sys.executable, str(BENCH / "http2_floods.py"), "--servers", "corral",
            "--attacks", "rapid-reset,hpack-bomb"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "| corral |" in line]
    assert len(rows) == 2, done.stdout
    for row in rows:
        assert "GOAWAY ENHANCE_YOUR_CALM" in row, row
        assert " 0 of " not in row.split(" | ")[-1], row  # the normal client was served


def test_a_missing_tool_is_one_line_and_exit_2(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}  # no h2load, no curl
    for script in ("http2.py", "http2_floods.py"):
        done = subprocess.run([sys.executable, str(BENCH / script)], capture_output=True, text=True, timeout=60,
                              cwd=ROOT, env=env, check=False)
        assert done.returncode == 2, done.stdout + done.stderr
        assert done.stderr == "h2load is not installed (apt-get install nghttp2-client)\n"
