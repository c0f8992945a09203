"""benchmarks/metrics_overhead.py and metrics_instructions.py end to end in their --quick form, so the scripts
cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_metrics_overhead_run_writes_a_report(tmp_path: Path) -> None:
    argv = [sys.executable, str(ROOT / "benchmarks" / "metrics_overhead.py"), "--quick", "--results", str(tmp_path)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["errors"] == []
    for app in ("hello_fastapi:app", "hello_raw:app"):
        for setting in ("--metrics", "--no-metrics"):
            result = report["results"][app][setting]
            assert result["rps"] > 0 and result["failed"] == 0
            assert 5 < result["manager_pss_mib"] < 64
    for app in ("hello_fastapi:app", "hello_raw:app"):  # both settings at once, pinned to one CPU
        side = report["side_by_side"][app]
        assert side["on_us"] > 0 and side["off_us"] > 0 and side["rounds"] == 1
    assert "### Metrics overhead" in (tmp_path / "metrics.md").read_text()


def test_quick_metrics_instructions_run_writes_a_report(tmp_path: Path) -> None:
    argv = [sys.executable, str(ROOT / "benchmarks" / "metrics_instructions.py"), "--quick", "--results",
            str(tmp_path)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "metrics-instructions.json").read_text())
    assert report["errors"] == []
    for setting in ("--metrics", "--no-metrics"):
        (run,) = report["samples"]["hello_raw:app"][setting]
        assert run["requests"] > 0 and 0 < run["background"] < run["instructions"]
        assert 10_000 < run["per_request"] < 10_000_000  # a request is some 100,000 instructions of the worker's
    assert "### Metrics overhead in instructions" in (tmp_path / "metrics-instructions.md").read_text()
