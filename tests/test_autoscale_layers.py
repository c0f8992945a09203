"""The autoscaler decides from facts and returns a decision; the supervisor acts. So the autoscaler imports nothing
of the supervisor (not even for type checking), and the worker's side of shedding nothing of the manager."""

from __future__ import annotations

import ast
from pathlib import Path

import corral

SOURCE = Path(corral.__file__).parent


def imported(module: str) -> set[str]:
    """Every `corral` module a source file imports, wherever the import statement is."""
    path = SOURCE.joinpath(*module.split(".")[1:]).with_suffix(".py")
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
    return {name for name in names if name.startswith("corral")}


def test_the_autoscaler_does_not_import_the_supervisor() -> None:
    assert not {name for name in imported("corral.manager.autoscaler") if "supervisor" in name}
    assert not {name for name in imported("corral.manager.balance") if name.startswith("corral.")}


def test_the_workers_side_of_shedding_imports_nothing_of_the_manager() -> None:
    for module in ("corral.worker.shedding", "corral.shed_orders", "corral.worker.protocols"):
        assert not {name for name in imported(module) if name.startswith("corral.manager")}, module
