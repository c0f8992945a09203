"""`corral dev`'s decisions without processes: which changes count, its defaults, the watched directories."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.cli_run import dev_options, parse_run_arguments
from corral.discovery import Target
from corral.manager.dev import SourceFilter, watched_directories
from corral.manager.watch_policy import change_counts
from corral.tls.plan import certificate_plans

INCLUDE, EXCLUDE = ["*.py"], [".*", "*.py[cod]", "*~"]


@pytest.mark.parametrize(
    ("parts", "counts"),
    [
        (("app.py",), True),
        (("pkg", "models.py"), True),
        (("app.pyc",), False),
        (("notes.txt",), False),
        ((".app.py.swp",), False),
        (("app.py~",), False),
        (("__pycache__", "app.cpython-311.pyc"), False),
        (("__pycache__", "x.py"), False),
        ((".git", "hooks", "x.py"), False),
        ((".venv", "lib", "site.py"), False),
        (("venv", "lib", "site.py"), False),
        (("build", "lib", "site-packages", "x.py"), False),
        ((".hidden", "x.py"), False),
        ((), False),
    ],
)
def test_change_counts(parts: tuple[str, ...], counts: bool) -> None:
    assert change_counts(parts, INCLUDE, EXCLUDE) is counts


def test_globs_choose() -> None:
    assert change_counts(("templates", "page.html"), ["*.py", "*.html"], EXCLUDE)
    assert not change_counts(("generated", "x.py"), INCLUDE, ["generated"])


def test_filter_skips_any_virtual_environment_and_the_state_dir(tmp_path: Path) -> None:
    (tmp_path / "myenv" / "lib").mkdir(parents=True)
    (tmp_path / "myenv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    settings = parse_run_arguments([], dev=True).settings.options()
    accept = SourceFilter([tmp_path], settings, [tmp_path / "state"])
    assert accept(None, str(tmp_path / "app.py"))
    assert not accept(None, str(tmp_path / "myenv" / "lib" / "x.py"))
    assert not accept(None, str(tmp_path / "state" / "x.py"))
    assert not accept(None, "/elsewhere/x.py")


def test_watched_directories(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    other = tmp_path / "other"
    settings = parse_run_arguments(["--reload-dir", str(other), "--reload-dir", str(tmp_path / "pkg" / "sub")],
                                   dev=True).settings.options()
    roots = watched_directories(settings, Target("pkg.main", "app", str(tmp_path)))
    assert roots == [tmp_path / "pkg", other]  # the package, not the directory above it; no directory twice
    plain = watched_directories(settings, Target("main", "app", str(tmp_path)))
    assert plain[0] == tmp_path


def test_dev_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    resolved = parse_run_arguments([], dev=True)
    options = dev_options(resolved)
    assert (options.workers, options.reload, options.access_log, options.bind) == (1, True, True, ["127.0.0.1:8000"])
    assert resolved.sources["workers"] == "corral dev"
    # the command line wins over corral dev's defaults
    assert dev_options(parse_run_arguments(["-w", "3", "--no-reload"], dev=True)).workers == 3
    # --https: loopback and the local CA, even for a public name
    https = dev_options(parse_run_arguments(["--https", "example.com"], dev=True))
    assert https.bind == ["127.0.0.1:8443"]
    assert [plan.label for plan in certificate_plans(https)] == ["local"]
    # corral run keeps its own defaults
    run = parse_run_arguments([]).settings.options()
    assert (run.workers, run.reload, run.local_ca) == ("auto", False, False)


def test_an_app_under_the_interpreters_prefix_is_watched() -> None:
    """A system Python's prefix is /usr: an app in /usr/src/app must still reload (only virtual environments
    inside the watched directories are skipped)."""
    import sys

    root = Path(sys.prefix).resolve() / "src" / "app"
    settings = parse_run_arguments([], dev=True).settings.options()
    assert SourceFilter([root], settings, [])(None, str(root / "main.py"))
