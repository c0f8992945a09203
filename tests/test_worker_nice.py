"""--worker-nice: the workers run below the manager's and the template's CPU priority, so that supervision keeps a
CPU when the workers take every one; a parked spare keeps the template's until it is promoted (its wake-up is
the replacement of a crashed worker). Read from /proc, on real processes."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from harness import SECOND_REQUEST_CRASHES_APP, Corral, wait_for, write_app


def nice(pid: int) -> int:
    """The process's nice value: field 19 of /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[16])


def thread_nices(pid: int) -> set[int]:
    return {nice(int(task.name)) for task in Path(f"/proc/{pid}/task").iterdir()}


def crash(corral: Corral) -> None:
    """A worker answers, then dies on the same connection's next request."""
    with httpx.Client(base_url=corral.url, timeout=10) as client:
        assert client.get("/").text == "ok"
        with pytest.raises(httpx.HTTPError):
            client.get("/")


def test_workers_run_below_the_supervisors_priority_and_a_spare_from_its_promotion(
    corrals: list[Corral], tmp_path: Path
) -> None:
    write_app(tmp_path, SECOND_REQUEST_CRASHES_APP)
    corral = Corral(tmp_path, "app.py", "-w", "1", "--worker-nice", "5")
    corrals.append(corral)
    [worker] = corral.wait_ready(1)
    [template] = [t["pid"] for t in corral.status()["templates"]]
    base = nice(corral.process.pid)
    assert nice(template) == base
    assert thread_nices(worker) == {base + 5}, "every thread of the worker"

    crash(corral)  # a crash while serving: the manager parks a spare
    spare: int = wait_for(lambda: next((s["pid"] for s in corral.status()["spares"] if s["pid"]), None),
                          what="a parked spare")  # fmt: skip
    wait_for(lambda: corral.status()["spares"][0]["state"] == "parked", what="the spare parked")
    assert nice(spare) == base, "parked, it keeps the template's priority"

    crash(corral)  # the spare takes the crashed worker's place
    wait_for(lambda: [w["pid"] for w in corral.status()["workers"] if w["state"] == "ready"] == [spare],
             what="the spare serving")  # fmt: skip
    assert thread_nices(spare) == {base + 5}
    assert nice(corral.process.pid) == base and nice(template) == base


def test_by_default_workers_keep_the_templates_priority(corrals: list[Corral], tmp_path: Path) -> None:
    write_app(tmp_path, SECOND_REQUEST_CRASHES_APP)
    corral = Corral(tmp_path, "app.py", "-w", "2")
    corrals.append(corral)
    workers = corral.wait_ready(2)
    assert {nice(pid) for pid in workers} == {nice(corral.process.pid)}
