"""benchmarks/run.py end to end on a tiny subset (Corral, throughput, --quick), so the script cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_throughput_run_writes_a_report(tmp_path: Path) -> None:
    argv = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--only", "throughput"]
    argv += ["--servers", "corral", "--results", str(tmp_path)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stdout + done.stderr

    report = json.loads((tmp_path / "latest.json").read_text())
    assert report["errors"] == []
    assert report["machine"]["corral_env"]["uvicorn"]
    for app in ("hello_fastapi:app", "hello_raw:app"):
        result = report["results"]["throughput"][app]["corral"]
        assert result["requests"] > 0
        assert result["rps"] > 0
        assert result["errors"] == dict.fromkeys(("connect", "read", "write", "status", "timeout"), 0), result
    assert any("corral run hello_fastapi:app -w 2" in " ".join(argv) for argv in report["commands"].values())
    markdown = (tmp_path / "latest.md").read_text()
    assert "### Throughput: 2 workers" in markdown
    assert "| hello_raw:app | corral |" in markdown
