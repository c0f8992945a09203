"""Unit tests of APP resolution and the app import, with real app files in a temporary directory."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest

from corral.discovery import AppLoadError, Target, import_app, resolve_target
from corral.errors import CorralError, ExitCode

ASGI_APP = dedent(
    """
    async def app(scope, receive, send):
        pass
    """
)


def write(path: Path, text: str = ASGI_APP) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dedent(text).lstrip("\n"))
    return path


def usage_error(app: str | None, cwd: Path, app_dir: str | None = None) -> str:
    with pytest.raises(CorralError) as error:
        resolve_target(app, app_dir, cwd)
    assert error.value.exit_code == ExitCode.USAGE
    message = str(error.value)
    assert "\n" not in message
    return message


def load_error(target: Target, factory: bool = False) -> str:
    with pytest.raises(AppLoadError) as error:
        import_app(target, factory)
    assert error.value.exit_code == ExitCode.APP_FAILED_TO_START
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.fixture
def isolated_imports() -> Iterator[None]:
    """import_app changes sys.path and sys.modules; undo both so the tests do not see each other's apps."""
    path, modules = list(sys.path), set(sys.modules)
    importlib.invalidate_caches()
    yield
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        del sys.modules[name]


# --- resolve_target: module:attr ------------------------------------------------------------------


def test_module_and_attribute(tmp_path: Path) -> None:
    target = resolve_target("main:app", None, tmp_path)
    assert target == Target("main", "app", str(tmp_path.resolve()))
    assert str(target) == "main:app"


def test_dotted_module_and_attribute(tmp_path: Path) -> None:
    target = resolve_target("shop.web:server.asgi", None, tmp_path)
    assert (target.module, target.attr) == ("shop.web", "server.asgi")


def test_app_dir_is_the_import_path(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    target = resolve_target("main:app", "src", tmp_path)
    assert target.path == str((tmp_path / "src").resolve())


def test_missing_app_dir(tmp_path: Path) -> None:
    message = usage_error("main:app", tmp_path, app_dir="nowhere")
    assert "--app-dir nowhere" in message


@pytest.mark.parametrize(
    ("app", "says"),
    [
        ("main", "expected module:attr"),
        ("main:", "expected module:attr"),
        (":app", "expected module:attr"),
        ("a:b:c", "expected module:attr"),
        ("main:1app", "is not an attribute name"),
        ("main:app-v2", "is not an attribute name"),
        ("main:app.", "is not an attribute name"),
        ("my-service:app", "is not a module name"),
        ("shop..web:app", "is not a module name"),
    ],
)
def test_bad_app_strings(tmp_path: Path, app: str, says: str) -> None:
    message = usage_error(app, tmp_path)
    assert f"bad APP {app!r}" in message
    assert says in message


# --- resolve_target: files ------------------------------------------------------------------------


def test_file(tmp_path: Path) -> None:
    write(tmp_path / "service.py")
    assert resolve_target("service.py", None, tmp_path) == Target("service", "app", str(tmp_path.resolve()))


def test_file_with_attribute(tmp_path: Path) -> None:
    write(tmp_path / "service.py")
    assert resolve_target("service.py:api", None, tmp_path) == Target(
        "service", "api", str(tmp_path.resolve())
    )


def test_file_in_a_plain_directory(tmp_path: Path) -> None:
    write(tmp_path / "deploy" / "serve.py")
    target = resolve_target("deploy/serve.py", None, tmp_path)
    assert target == Target("serve", "app", str((tmp_path / "deploy").resolve()))


def test_absolute_file_path(tmp_path: Path) -> None:
    path = write(tmp_path / "elsewhere" / "entry.py")
    other = tmp_path / "cwd"
    other.mkdir()
    assert resolve_target(f"{path}:application", None, other) == Target(
        "entry", "application", str(path.parent.resolve())
    )


def test_file_in_a_package_is_imported_as_package_module(tmp_path: Path) -> None:
    write(tmp_path / "shop" / "__init__.py", "")
    write(tmp_path / "shop" / "web" / "__init__.py", "")
    write(tmp_path / "shop" / "web" / "api.py")
    target = resolve_target("shop/web/api.py:app", None, tmp_path)
    assert target == Target("shop.web.api", "app", str(tmp_path.resolve()))


def test_package_init_file_is_the_package(tmp_path: Path) -> None:
    write(tmp_path / "shop" / "__init__.py")
    assert resolve_target("shop/__init__.py", None, tmp_path) == Target(
        "shop", "app", str(tmp_path.resolve())
    )


def test_file_relative_to_app_dir(tmp_path: Path) -> None:
    write(tmp_path / "src" / "service.py")
    target = resolve_target("service.py", "src", tmp_path)
    assert target == Target("service", "app", str((tmp_path / "src").resolve()))


def test_missing_file(tmp_path: Path) -> None:
    message = usage_error("service.py", tmp_path)
    assert "no such file" in message
    assert str(tmp_path / "service.py") in message


def test_missing_file_with_attribute(tmp_path: Path) -> None:
    assert "no such file" in usage_error("nested/service.py:api", tmp_path)


def test_path_that_is_not_a_python_file(tmp_path: Path) -> None:
    write(tmp_path / "deploy" / "serve.txt", "")
    message = usage_error("deploy/serve.txt:app", tmp_path)
    assert "serve.txt is not a .py file" in message


# --- resolve_target: discovery --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (["main.py", "app.py", "api.py", "app/main.py"], ("main", ".")),
        (["app.py", "api.py", "app/main.py"], ("app", ".")),
        (["api.py", "app/main.py"], ("api", ".")),
        (["app/main.py"], ("main", "app")),
    ],
)
def test_discovery_order(tmp_path: Path, files: list[str], expected: tuple[str, str]) -> None:
    for name in files:
        write(tmp_path / name)
    target = resolve_target(None, None, tmp_path)
    module, directory = expected
    assert target == Target(module, "app", str((tmp_path / directory).resolve()))


def test_discovery_of_an_app_package(tmp_path: Path) -> None:
    write(tmp_path / "app" / "__init__.py", "")
    write(tmp_path / "app" / "main.py")
    assert resolve_target(None, None, tmp_path) == Target("app.main", "app", str(tmp_path.resolve()))


def test_discovery_in_app_dir(tmp_path: Path) -> None:
    write(tmp_path / "main.py")
    write(tmp_path / "src" / "api.py")
    target = resolve_target("", "src", tmp_path)
    assert target == Target("api", "app", str((tmp_path / "src").resolve()))


def test_discovery_ignores_directories_named_like_candidates(tmp_path: Path) -> None:
    (tmp_path / "main.py").mkdir()
    write(tmp_path / "api.py")
    assert resolve_target(None, None, tmp_path).module == "api"


def test_nothing_to_discover(tmp_path: Path) -> None:
    write(tmp_path / "server.py")
    message = usage_error(None, tmp_path)
    assert "no APP given" in message
    assert "main.py, app.py, api.py, app/main.py" in message
    assert str(tmp_path.resolve()) in message


# --- import_app -----------------------------------------------------------------------------------


@pytest.mark.usefixtures("isolated_imports")
def test_import_a_file_app(tmp_path: Path) -> None:
    write(tmp_path / "corral_t_ok.py")
    app = import_app(resolve_target("corral_t_ok.py", None, tmp_path))
    assert callable(app)
    assert app.__module__ == "corral_t_ok"
    assert sys.path[0] == str(tmp_path.resolve())


@pytest.mark.usefixtures("isolated_imports")
def test_import_a_dotted_attribute_from_a_package(tmp_path: Path) -> None:
    write(tmp_path / "corral_t_pkg" / "__init__.py", "")
    write(
        tmp_path / "corral_t_pkg" / "web.py",
        """
        class Server:
            async def __call__(self, scope, receive, send):
                pass

        class Holder:
            asgi = Server()
        """,
    )
    app = import_app(resolve_target("corral_t_pkg/web.py:Holder.asgi", None, tmp_path))
    assert type(app).__name__ == "Server"
    assert sys.modules["corral_t_pkg.web"].Holder.asgi is app


@pytest.mark.usefixtures("isolated_imports")
def test_import_a_module_that_does_not_exist(tmp_path: Path) -> None:
    message = load_error(resolve_target("corral_t_absent:app", None, tmp_path))
    assert message == "cannot import corral_t_absent:app: no module named 'corral_t_absent'"


@pytest.mark.usefixtures("isolated_imports")
def test_import_error_inside_the_app_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(
        tmp_path / "corral_t_dep.py",
        """
        import os

        import corral_t_not_installed
        """,
    )
    message = load_error(resolve_target("corral_t_dep.py", None, tmp_path))
    assert message.startswith("cannot import corral_t_dep:app: ModuleNotFoundError")
    assert "corral_t_not_installed" in message
    assert f"({path.resolve()}, line 3)" in message


@pytest.mark.usefixtures("isolated_imports")
def test_exception_at_import_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(
        tmp_path / "corral_t_boom.py",
        """
        def connect():
            raise RuntimeError("database unreachable")

        connect()
        """,
    )
    message = load_error(resolve_target("corral_t_boom.py", None, tmp_path))
    assert message == (
        f"cannot import corral_t_boom:app: RuntimeError: database unreachable ({path.resolve()}, line 2)"
    )


@pytest.mark.usefixtures("isolated_imports")
def test_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(
        tmp_path / "corral_t_syntax.py",
        """
        x = 1
        def broken(:
            pass
        """,
    )
    message = load_error(resolve_target("corral_t_syntax.py", None, tmp_path))
    assert message.startswith("cannot import corral_t_syntax:app: SyntaxError: ")
    assert f"({path.resolve()}, line 2)" in message


@pytest.mark.usefixtures("isolated_imports")
def test_syntax_error_in_a_module_the_app_imports(tmp_path: Path) -> None:
    helper = write(tmp_path / "corral_t_helper.py", "value = (\n")
    write(tmp_path / "corral_t_uses.py", "import corral_t_helper\n" + ASGI_APP)
    message = load_error(resolve_target("corral_t_uses.py", None, tmp_path))
    assert "SyntaxError" in message
    assert f"({helper.resolve()}, line 1)" in message


@pytest.mark.usefixtures("isolated_imports")
def test_sys_exit_at_import_is_an_app_load_error(tmp_path: Path) -> None:
    write(tmp_path / "corral_t_exit.py", "import sys\nsys.exit('missing DATABASE_URL')\n")
    message = load_error(resolve_target("corral_t_exit.py", None, tmp_path))
    assert "SystemExit: missing DATABASE_URL" in message
    assert "line 2" in message


@pytest.mark.usefixtures("isolated_imports")
def test_missing_attribute(tmp_path: Path) -> None:
    write(tmp_path / "corral_t_attr.py")
    message = load_error(resolve_target("corral_t_attr.py:application", None, tmp_path))
    assert message == "cannot import corral_t_attr:application: module 'corral_t_attr' has no 'application'"


@pytest.mark.usefixtures("isolated_imports")
def test_missing_part_of_a_dotted_attribute(tmp_path: Path) -> None:
    write(tmp_path / "corral_t_dotted.py", "class Holder:\n    pass\n")
    message = load_error(resolve_target("corral_t_dotted:Holder.asgi", None, tmp_path))
    assert "has no 'Holder.asgi'" in message


@pytest.mark.usefixtures("isolated_imports")
def test_attribute_that_is_not_callable(tmp_path: Path) -> None:
    write(tmp_path / "corral_t_value.py", "app = {'not': 'an app'}\n")
    message = load_error(resolve_target("corral_t_value.py", None, tmp_path))
    assert "corral_t_value:app is not an ASGI or WSGI app (not callable)" in message


FACTORY = """
class App:
    def __init__(self, name):
        self.name = name

    async def __call__(self, scope, receive, send):
        pass

def create_app():
    return App("made by the factory")

def broken_factory():
    raise LookupError("no settings")
"""


@pytest.mark.usefixtures("isolated_imports")
def test_factory(tmp_path: Path) -> None:
    write(tmp_path / "corral_t_factory.py", FACTORY)
    app: Any = import_app(resolve_target("corral_t_factory:create_app", None, tmp_path), factory=True)
    assert app.name == "made by the factory"


@pytest.mark.usefixtures("isolated_imports")
def test_without_factory_the_factory_itself_is_returned(tmp_path: Path) -> None:
    module = write(tmp_path / "corral_t_factory2.py", FACTORY)
    app = import_app(resolve_target(f"{module.name}:create_app", None, tmp_path))
    assert app is sys.modules["corral_t_factory2"].create_app


@pytest.mark.usefixtures("isolated_imports")
def test_failing_factory(tmp_path: Path) -> None:
    path = write(tmp_path / "corral_t_factory3.py", FACTORY)
    message = load_error(resolve_target("corral_t_factory3:broken_factory", None, tmp_path), factory=True)
    assert message.startswith("factory corral_t_factory3:broken_factory failed: LookupError: no settings")
    assert f"({path.resolve()}, line 12)" in message


@pytest.mark.usefixtures("isolated_imports")
def test_factory_returning_something_not_callable(tmp_path: Path) -> None:
    write(tmp_path / "corral_t_factory4.py", "def create_app():\n    return None\n")
    message = load_error(resolve_target("corral_t_factory4:create_app", None, tmp_path), factory=True)
    assert "is not an ASGI or WSGI app" in message


@pytest.mark.usefixtures("isolated_imports")
def test_multi_line_exception_keeps_its_type_and_first_line(tmp_path: Path) -> None:
    write(tmp_path / "corral_t_multi.py", "raise ValueError('DATABASE_URL is not set\\nexport it first')\n")
    message = load_error(resolve_target("corral_t_multi.py", None, tmp_path))
    assert "ValueError: DATABASE_URL is not set" in message


@pytest.mark.usefixtures("isolated_imports")
def test_failure_inside_a_library_names_the_line_of_the_app(tmp_path: Path) -> None:
    path = write(tmp_path / "corral_t_lib.py", "import json\nconfig = json.loads('{')\n")
    message = load_error(resolve_target("corral_t_lib.py", None, tmp_path))
    assert "JSONDecodeError" in message
    assert f"({path.resolve()}, line 2)" in message
