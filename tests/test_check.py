"""`corral check`: a real import in a fresh interpreter, measured with psutil."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from corral.check import FALLBACK, MIB, Footprint, Memory, estimate_memory, expected_memory, measure
from harness import CORRAL, options_from

# 64 MiB the app writes to at import, like a model loaded at startup; and a measurable import time.
HEAVY = """
import time
WEIGHTS = bytearray(64 * 1024 * 1024)
for i in range(0, len(WEIGHTS), 4096):
    WEIGHTS[i] = 1
time.sleep(0.3)
print("loaded the weights")

async def app(scope, receive, send):
    pass
"""


def corral(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CORRAL, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("corral: ")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_measures_the_import(tmp_path: Path) -> None:
    (tmp_path / "heavy.py").write_text(HEAVY)
    footprint = measure(options_from({"app": "heavy:app"}), tmp_path)
    assert footprint.app == "heavy:app"
    share = footprint.app_share
    assert share.rss >= 60 * MIB
    assert share.uss >= 60 * MIB
    assert share.pss is not None and share.pss >= 60 * MIB
    assert footprint.interpreter.rss > 5 * MIB, "the interpreter with corral and uvicorn loaded"
    assert footprint.import_seconds >= 0.3


def test_json_output_is_clean_of_the_apps_prints(tmp_path: Path) -> None:
    (tmp_path / "heavy.py").write_text(HEAVY)
    result = corral("check", "heavy:app", "--workers", "3", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert "loaded the weights" in result.stderr
    assert data["app"] == "heavy:app"
    assert data["workers"] == 3
    assert data["app_share"]["uss"] >= 60 * MIB
    footprint = Footprint(
        data["app"], Memory(**data["interpreter"]), Memory(**data["after_import"]), data["import_seconds"],
        data["python_heap"],
    )
    assert data["estimated_memory"] == expected_memory(footprint, 3, preload=True, max_memory=None)
    assert data["memory_budget"] == estimate_memory(footprint, 3, preload=True, max_memory=None)


def test_table(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("async def app(scope, receive, send):\n    pass\n")
    result = corral("check", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    labels = ("corral check: main:app", "RSS", "USS", "PSS", "after import", "expected for", "memory limit")
    for label in labels:
        assert label in result.stdout


def test_factory_is_called(tmp_path: Path) -> None:
    (tmp_path / "factory.py").write_text(
        "def create():\n"
        "    global BUFFER\n"
        "    BUFFER = b'x' * (48 * 1024 * 1024)\n"
        "    async def app(scope, receive, send):\n"
        "        pass\n"
        "    return app\n"
    )
    footprint = measure(options_from({"app": "factory:create", "factory": True}), tmp_path)
    assert footprint.app_share.uss >= 40 * MIB


def test_failures_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("import nonexistent_dependency_xyz\n")
    (tmp_path / "crash.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    (tmp_path / "leaves.py").write_text("import os\nos._exit(0)\n")
    (tmp_path / "hangs.py").write_text("import time\ntime.sleep(600)\n")

    line = one_line_error(corral("check", "broken:app", cwd=tmp_path), 3)
    assert "cannot import broken:app" in line and "nonexistent_dependency_xyz" in line
    line = one_line_error(corral("check", "crash:app", cwd=tmp_path), 3)
    assert "SIGSEGV" in line
    line = one_line_error(corral("check", "leaves:app", cwd=tmp_path), 3)
    assert "before it was measured" in line
    line = one_line_error(corral("check", "hangs:app", "--import-timeout", "3", cwd=tmp_path), 3)
    assert "took more than 3 s" in line
    line = one_line_error(corral("check", "missing.py", cwd=tmp_path), 2)
    assert "no such file" in line


def test_expected() -> None:
    footprint = Footprint(
        "x:app", Memory(48 * MIB, 32 * MIB, 33 * MIB), Memory(96 * MIB, 64 * MIB, 66 * MIB), 1.0, 10 * MIB
    )
    one = expected_memory(footprint, 1, preload=True, max_memory=None)
    # manager + the template's pages once + a worker: its base and 60 % of the app's Python objects
    assert one == 96 * MIB  # 16 + 66 + (4 + 6) = 92, rounded up to 16 MiB
    assert expected_memory(footprint, 4, preload=True, max_memory=None) == 128 * MIB  # 16 + 66 + 4 * 10 = 122
    # without preload each worker holds the app (64 - 32 MiB private) beside the bare template (33)
    assert expected_memory(footprint, 1, preload=False, max_memory=None) == 96 * MIB  # 16 + 33 + 10 + 32 = 91
    # A worker may grow to --max-memory before it is recycled.
    assert expected_memory(footprint, 2, preload=True, max_memory=300 * MIB) == 688 * MIB  # 16 + 66 + 600 = 682
    assert expected_memory(FALLBACK, 1, preload=True, max_memory=None) % (16 * MIB) == 0


def test_budget() -> None:
    footprint = Footprint(
        "x:app", Memory(48 * MIB, 32 * MIB, 33 * MIB), Memory(96 * MIB, 64 * MIB, 66 * MIB), 1.0
    )
    one = estimate_memory(footprint, 1, preload=True, max_memory=None)
    assert one == (48 + 96 + 96) * MIB  # manager + template + a worker: its private copy and half again
    assert estimate_memory(footprint, 4, preload=True, max_memory=None) - one == 3 * 96 * MIB
    assert estimate_memory(footprint, 1, preload=False, max_memory=None) == (48 + 96) * MIB
    # A worker may grow to --max-memory before it is recycled; rounded up to 16 MiB.
    assert estimate_memory(footprint, 2, preload=True, max_memory=300 * MIB) == 752 * MIB
    assert estimate_memory(FALLBACK, 1, preload=True, max_memory=None) % (16 * MIB) == 0
