"""`corral status` shows the memory of the whole tree (manager, templates, workers) and `corral check` estimates
a warmed-up run's total."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import psutil

from harness import LIFESPAN_APP, Corral, run_cli, write_app

FASTAPI_APP = """
    from fastapi import FastAPI
    from pydantic import BaseModel

    app = FastAPI()

    class Item(BaseModel):
        name: str
        price: float
        tags: list[str] = []

    @app.get("/")
    def index() -> dict[str, str]:
        return {"hello": "world"}

    @app.get("/items/{item_id}")
    def item(item_id: int) -> Item:
        return Item(name=f"item {item_id}", price=item_id * 1.5, tags=["a", "b"])
"""


def tree_pss(pid: int) -> int:
    root = psutil.Process(pid)
    return sum(p.memory_full_info().pss for p in [root, *root.children(recursive=True)])


def test_status_lists_manager_and_templates_and_the_whole_trees_pss(corrals: list[Corral], tmp_path: Path) -> None:
    write_app(tmp_path, LIFESPAN_APP)
    corral = Corral(tmp_path, "app.py", "-w", "2")
    corrals.append(corral)
    corral.wait_ready(2)
    status = corral.status()
    measured = tree_pss(corral.process.pid)
    manager, templates, workers = status["manager"], status["templates"], status["workers"]
    assert manager["pid"] == corral.process.pid
    assert [t["generation"] for t in templates] == [1]
    for process in [manager, *templates, *workers]:
        assert 0 < process["memory_uss"] <= process["memory_pss"] <= process["memory_rss"], process
    assert status["memory_pss_other"] == 0  # the app started nothing
    listed = sum(p["memory_pss"] for p in [manager, *templates, *workers])
    assert abs(status["memory_pss_total"] - measured) <= 0.05 * measured, (status["memory_pss_total"], measured)
    assert abs(listed - measured) <= 0.05 * measured  # nothing else in the tree: the rows add up
    table = run_cli("status", "--control", str(corral.control), env={"COLUMNS": "200"})
    assert table.returncode == 0, table.stderr
    assert "manager" in table.stdout and "template 1" in table.stdout
    assert "total PSS" in table.stdout


def warm_up(url: str, requests: int, threads: int = 2) -> None:
    """GET requests on new connections (so every worker serves), over two routes."""

    def client() -> None:
        with httpx.Client(headers={"connection": "close"}, timeout=30) as session:
            for number in range(requests // threads):
                path = "/" if number % 2 else f"/items/{number}"
                assert session.get(url + path).status_code == 200

    pool = [threading.Thread(target=client) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()


def test_check_estimates_a_warmed_up_run_within_a_quarter(corrals: list[Corral], tmp_path: Path) -> None:
    write_app(tmp_path, FASTAPI_APP)
    check = run_cli("check", "app.py", "-w", "2", "--json", cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    estimate = json.loads(check.stdout)["estimated_memory"]
    corral = Corral(tmp_path, "app.py", "-w", "2")
    corrals.append(corral)
    corral.wait_ready(2)
    warm_up(corral.url, 600)
    status = corral.status()
    assert all(w["requests"] > 0 for w in status["workers"]), status["workers"]
    total = status["memory_pss_total"]
    assert abs(estimate - total) <= 0.25 * total, (estimate, total)
