"""benchmarks/chaos.py end to end on Corral alone (--quick), both cases, so the script cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_chaos_run_on_corral_writes_a_report(tmp_path: Path) -> None:
    argv = [sys.executable, str(ROOT / "benchmarks" / "chaos.py"), "--quick", "--servers", "corral"]
    done = subprocess.run([*argv, "--results", str(tmp_path)], capture_output=True, text=True, timeout=240,
                          cwd=ROOT, check=False)
    assert done.returncode == 0, done.stdout + done.stderr

    report = json.loads((tmp_path / "chaos.json").read_text())
    assert report["errors"] == []
    result = report["results"]["corral"]
    assert result["alive_at_end"] and result["requests"] > 0
    # one worker of four killed at a time: there is always a ready worker to kill, and never 0 ready
    assert result["kills"] == 10 and result["skipped_kills"] == 0, result
    # every kill replaced, none slowly (0.5 s is the target on a quiet machine; 5 s leaves room for a loaded one)
    assert result["replaced"] == result["kills"] and result["replacement_max_s"] < 5.0, result
    assert result["samples"] >= 50 and result["zero_ready_share"] == 0, result
    assert "| corral |" in (tmp_path / "chaos.md").read_text()

    for one_in in ("50", "500"):  # the crash case: 1 request in N ends its worker, and corral keeps serving
        crash = report["crash"][one_in]["corral"]
        assert crash["alive_at_end"] and crash["served"] > 0 and crash["samples"] > 0, crash
    assert report["crash"]["50"]["corral"]["workers_started"] > 0
