"""The module map of docs/architecture.md, checked against the code: no import cycle, the worker imports nothing of
the manager, nothing below the command line imports it, and no module grows past the size one reader can hold.

Every import counts, wherever it stands (inside a function or under TYPE_CHECKING too): a cycle that only a lazy
import hides is still a cycle to whoever reads the code.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import corral

SOURCE = Path(corral.__file__).parent
LONGEST = 450  # lines
# The `corral` command: option parsing (typer, pydantic), the client commands and the exports. Everything else
# (the manager, templates, workers and the small modules they share) runs without it.
COMMAND_LINE = {
    "corral.__main__", "corral.cli", "corral.cli_app", "corral.cli_run", "corral.cli_control", "corral.cli_export",
    "corral.config", "corral.config_file", "corral.validators", "corral.reference", "corral.control_path",
    "corral.status_view", "corral.events_view", "corral.terminal", "corral.top_view", "corral.check",
}  # fmt: skip


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in SOURCE.rglob("*.py")}


def imports(module: str) -> set[str]:
    """The Corral modules `module` imports, by absolute or relative import, anywhere in its source."""
    found: set[str] = set()
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        found |= {name for name in names if name in MODULES and name != module}
    return found


GRAPH = {module: imports(module) for module in MODULES}


def cycles() -> Iterator[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(module: str) -> Iterator[list[str]]:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in sorted(GRAPH[module]):
            if other not in index:
                yield from visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            group = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                group.append(other)
                if other == module:
                    break
            if len(group) > 1:
                yield sorted(group)

    for module in sorted(MODULES):
        if module not in index:
            yield from visit(module)


def test_the_graph_sees_the_imports_it_checks() -> None:
    """Guards the checks below against passing on an empty graph."""
    assert "corral.manager.policy" in GRAPH["corral.manager.supervisor"]
    assert "corral.worker.http.cycle" in GRAPH["corral.worker.http.protocol"]
    assert "corral.cli_control" in GRAPH["corral.cli"]


def test_no_import_cycle() -> None:
    assert list(cycles()) == []


def test_no_worker_module_imports_the_manager() -> None:
    offending = {module: sorted(name for name in GRAPH[module] if name.startswith("corral.manager"))
                 for module in MODULES if module.startswith("corral.worker")}
    assert {module: names for module, names in offending.items() if names} == {}


def test_nothing_below_the_command_line_imports_it() -> None:
    def command_line(module: str) -> bool:
        return module in COMMAND_LINE or module.startswith("corral.export")

    offending = {module: sorted(name for name in GRAPH[module] if command_line(name))
                 for module in MODULES if not command_line(module)}
    assert {module: names for module, names in offending.items() if names} == {}


def test_no_module_is_longer_than_a_reader_can_hold() -> None:
    lengths = {module: len(path.read_text().splitlines()) for module, path in MODULES.items()}
    assert {module: lines for module, lines in lengths.items() if lines > LONGEST} == {}
