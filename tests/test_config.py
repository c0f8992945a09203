"""Unit tests of the settings layers: command line > CORRAL_* > corral.toml / [tool.corral] > defaults."""

from __future__ import annotations

import os
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.cli import parse_run_arguments
from corral.config import (
    FIELDS,
    ConfigError,
    Settings,
    load_settings,
    parse_size,
    run_arguments,
    settings_from,
)
from corral.errors import CorralError, ExitCode
from corral.options import Options
from harness import options_from


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def assert_one_line_error(error: pytest.ExceptionInfo[ConfigError], *parts: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    assert error.value.exit_code == ExitCode.USAGE
    for part in parts:
        assert part in message


@pytest.fixture(autouse=True)
def no_corral_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """`parse_run_arguments` reads os.environ: the tests start from an environment without CORRAL_*."""
    for key in list(os.environ):
        if key.upper().startswith("CORRAL_") or key == "WEB_CONCURRENCY":
            monkeypatch.delenv(key)


@pytest.fixture
def clean_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """For `parse_run_arguments`, which reads the current directory."""
    monkeypatch.chdir(tmp_path)
    yield tmp_path


# --- defaults and layering ------------------------------------------------------------------------


def test_defaults_without_any_layer(tmp_path: Path) -> None:
    resolved = load_settings({}, environ={}, cwd=tmp_path)
    assert resolved.config_file is None
    assert set(resolved.sources) == set(FIELDS)
    assert set(resolved.sources.values()) == {"default"}
    settings = resolved.settings
    assert settings.bind == ["127.0.0.1:8000"]
    assert settings.workers == "auto"
    assert settings.timeout == 30.0
    assert settings.crash_limit == 5
    assert settings.crash_window == 60.0
    assert settings.backoff_max == 30.0
    assert settings.acme_challenges == ["http-01", "tls-alpn-01"]


def test_each_layer_overrides_the_one_below(tmp_path: Path) -> None:
    config = write(
        tmp_path / "corral.toml", 'workers = 2\ntimeout = 10\nname = "file"\nlog_level = "debug"\n'
    )
    environ = {"CORRAL_WORKERS": "3", "CORRAL_TIMEOUT": "20"}
    resolved = load_settings({"workers": "4", "app": None}, environ=environ, cwd=tmp_path)
    settings, sources = resolved.settings, resolved.sources
    assert resolved.config_file == config
    assert (settings.workers, sources["workers"]) == (4, "command line")
    assert (settings.timeout, sources["timeout"]) == (20.0, "env CORRAL_TIMEOUT")
    assert (settings.name, sources["name"]) == ("file", str(config))
    assert (settings.log_level, sources["log_level"]) == ("debug", str(config))
    assert (settings.keep_alive, sources["keep_alive"]) == (5.0, "default")
    # None means "not given on the command line".
    assert (settings.app, sources["app"]) == (None, "default")


def test_false_on_the_command_line_overrides_true_elsewhere(tmp_path: Path) -> None:
    write(tmp_path / "corral.toml", "hsts = true\n")
    resolved = load_settings(
        {"hsts": False, "access_log": False}, environ={"CORRAL_ACCESS_LOG": "true"}, cwd=tmp_path
    )
    assert resolved.settings.hsts is False
    assert resolved.settings.access_log is False
    assert resolved.sources["hsts"] == resolved.sources["access_log"] == "command line"


def test_environment_values_are_parsed(tmp_path: Path) -> None:
    environ = {
        "CORRAL_ACCESS_LOG": "false",
        "CORRAL_PRELOAD": "0",
        "CORRAL_MAX_MEMORY": "1.5GiB",
        "CORRAL_MAX_REQUESTS": "1000",
        "CORRAL_KEEP_ALIVE": "2.5",
        "corral_name": "lowercase-works",
        "UNRELATED": "x",
    }
    resolved = load_settings({}, environ=environ, cwd=tmp_path)
    settings = resolved.settings
    assert settings.access_log is False
    assert settings.preload is False
    assert settings.max_memory == int(1.5 * 1024**3)
    assert settings.max_requests == 1000
    assert settings.keep_alive == 2.5
    assert settings.name == "lowercase-works"
    assert resolved.sources["max_memory"] == "env CORRAL_MAX_MEMORY"
    assert resolved.sources["name"] == "env CORRAL_NAME"


def test_environment_lists_are_comma_separated(tmp_path: Path) -> None:
    environ = {
        "CORRAL_BIND": " 127.0.0.1:9000 , unix:/tmp/corral-test.sock,, [::1]:9001 ",
        "CORRAL_HTTPS": "a.example,b.example",
        "CORRAL_FORWARDED_ALLOW_IPS": "10.0.0.0/8",
        "CORRAL_ACME_CHALLENGES": "tls-alpn-01",
    }
    settings = load_settings({}, environ=environ, cwd=tmp_path).settings
    assert settings.bind == ["127.0.0.1:9000", "unix:/tmp/corral-test.sock", "[::1]:9001"]
    assert settings.https == ["a.example", "b.example"]
    assert settings.forwarded_allow_ips == ["10.0.0.0/8"]
    assert settings.acme_challenges == ["tls-alpn-01"]


def test_environment_lists_as_json_keep_their_commas(tmp_path: Path) -> None:
    environ = {"CORRAL_PRESTART": '["python -c \\"print(1, 2)\\"", "alembic upgrade head"]'}
    settings = load_settings({}, environ=environ, cwd=tmp_path).settings
    assert settings.prestart == ['python -c "print(1, 2)"', "alembic upgrade head"]


@pytest.mark.parametrize("text", ["[not json", '["a", 1]', '["a", ["b"]]'])
def test_environment_list_that_is_not_a_json_array_of_strings(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings({}, environ={"CORRAL_PRESTART": text}, cwd=tmp_path)
    assert_one_line_error(error, "--prestart", "CORRAL_PRESTART", "JSON array")


def test_command_line_lists_are_not_split(tmp_path: Path) -> None:
    settings = load_settings({"prestart": ["echo a, b"]}, environ={}, cwd=tmp_path).settings
    assert settings.prestart == ["echo a, b"]


# --- WEB_CONCURRENCY ------------------------------------------------------------------------------


def test_web_concurrency_sets_the_worker_count(tmp_path: Path) -> None:
    resolved = load_settings({}, environ={"WEB_CONCURRENCY": "6"}, cwd=tmp_path)
    assert resolved.settings.workers == 6
    assert resolved.sources["workers"] == "env WEB_CONCURRENCY"


def test_web_concurrency_ranks_below_corral_workers_and_the_command_line(tmp_path: Path) -> None:
    environ = {"WEB_CONCURRENCY": "6", "CORRAL_WORKERS": "3"}
    assert load_settings({}, environ=environ, cwd=tmp_path).settings.workers == 3
    assert load_settings({"workers": "2"}, environ=environ, cwd=tmp_path).settings.workers == 2


def test_web_concurrency_ranks_above_the_config_file(tmp_path: Path) -> None:
    write(tmp_path / "corral.toml", "workers = 2\n")
    resolved = load_settings({}, environ={"WEB_CONCURRENCY": "6"}, cwd=tmp_path)
    assert resolved.settings.workers == 6
    assert load_settings({}, environ={"WEB_CONCURRENCY": ""}, cwd=tmp_path).settings.workers == 2


def test_bad_web_concurrency_names_its_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings({}, environ={"WEB_CONCURRENCY": "lots"}, cwd=tmp_path)
    assert_one_line_error(error, "--workers", "env WEB_CONCURRENCY")


# --- the config file ------------------------------------------------------------------------------


def test_corral_toml_accepts_dashed_and_underscored_keys(tmp_path: Path) -> None:
    config = write(
        tmp_path / "corral.toml",
        'graceful-timeout = 3\nmax_requests = 500\nmax-memory = "512MiB"\nbind = ["127.0.0.1:9000"]\n',
    )
    resolved = load_settings({}, environ={}, cwd=tmp_path)
    assert resolved.settings.graceful_timeout == 3.0
    assert resolved.settings.max_requests == 500
    assert resolved.settings.max_memory == 512 * 1024**2
    assert resolved.settings.bind == ["127.0.0.1:9000"]
    assert resolved.sources["graceful_timeout"] == str(config)


def test_tool_corral_in_pyproject(tmp_path: Path) -> None:
    pyproject = write(
        tmp_path / "pyproject.toml", '[project]\nname = "x"\n\n[tool.corral]\nworkers = 5\napp = "main:app"\n'
    )
    resolved = load_settings({}, environ={}, cwd=tmp_path)
    assert resolved.config_file == pyproject
    assert resolved.settings.workers == 5
    assert resolved.settings.app == "main:app"
    assert resolved.sources["app"] == str(pyproject)


def test_pyproject_without_tool_corral_is_not_a_config_file(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", '[project]\nname = "x"\n\n[tool.ruff]\nline-length = 100\n')
    resolved = load_settings({}, environ={}, cwd=tmp_path)
    assert resolved.config_file is None
    assert set(resolved.sources.values()) == {"default"}


def test_corral_toml_wins_over_pyproject(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", "[tool.corral]\nworkers = 5\n")
    config = write(tmp_path / "corral.toml", "workers = 2\n")
    resolved = load_settings({}, environ={}, cwd=tmp_path)
    assert resolved.config_file == config
    assert resolved.settings.workers == 2


def test_explicit_config_file(tmp_path: Path) -> None:
    write(tmp_path / "corral.toml", "workers = 2\n")
    other = write(tmp_path / "production.toml", "workers = 9\n")
    resolved = load_settings({}, config=str(other), environ={}, cwd=tmp_path)
    assert resolved.config_file == other
    assert resolved.settings.workers == 9


def test_explicit_pyproject_reads_tool_corral(tmp_path: Path) -> None:
    sub = tmp_path / "elsewhere"
    sub.mkdir()
    pyproject = write(sub / "pyproject.toml", "[tool.corral]\nworkers = 4\n")
    resolved = load_settings({}, config=str(pyproject), environ={}, cwd=tmp_path)
    assert resolved.settings.workers == 4


def test_corral_config_variable_names_the_file(tmp_path: Path) -> None:
    other = write(tmp_path / "staging.toml", 'name = "staging"\n')
    resolved = load_settings({}, environ={"CORRAL_CONFIG": str(other)}, cwd=tmp_path)
    assert resolved.config_file == other
    assert resolved.settings.name == "staging"


def test_missing_explicit_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings({}, config=str(tmp_path / "nope.toml"), environ={}, cwd=tmp_path)
    assert_one_line_error(error, "config file not found", "nope.toml")


@pytest.mark.parametrize("text", ["workers = \n", "[broken\n", 'name = "unterminated\n', "a = 1\na = 2\n"])
def test_malformed_corral_toml(tmp_path: Path, text: str) -> None:
    config = write(tmp_path / "corral.toml", text)
    with pytest.raises(ConfigError) as error:
        load_settings({}, environ={}, cwd=tmp_path)
    assert_one_line_error(error, str(config), "malformed TOML", "line ")


def test_malformed_explicit_pyproject(tmp_path: Path) -> None:
    pyproject = write(tmp_path / "pyproject.toml", "[tool.corral\nworkers = 2\n")
    with pytest.raises(ConfigError) as error:
        load_settings({}, config=str(pyproject), environ={}, cwd=tmp_path)
    assert_one_line_error(error, str(pyproject), "malformed TOML")


def test_malformed_pyproject_with_tool_corral_is_reported(tmp_path: Path) -> None:
    pyproject = write(tmp_path / "pyproject.toml", '[tool.corral]\nworkers = 2\nbind = "127.0.0.1:9000\n')
    with pytest.raises(ConfigError) as error:
        load_settings({}, environ={}, cwd=tmp_path)
    assert_one_line_error(error, str(pyproject), "malformed TOML")


def test_pyproject_with_a_non_table_tool_key_is_not_a_corral_config(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", "tool = 5\n")
    resolved = load_settings({}, environ={}, cwd=tmp_path)
    assert resolved.config_file is None
    assert resolved.sources["workers"] == "default"


def test_unknown_key_in_corral_toml(tmp_path: Path) -> None:
    config = write(tmp_path / "corral.toml", "workers = 2\nworkerz = 3\n")
    with pytest.raises(ConfigError) as error:
        load_settings({}, environ={}, cwd=tmp_path)
    assert_one_line_error(error, str(config), "unknown option 'workerz'")


def test_unknown_table_in_corral_toml(tmp_path: Path) -> None:
    write(tmp_path / "corral.toml", "[server]\nworkers = 2\n")
    with pytest.raises(ConfigError) as error:
        load_settings({}, environ={}, cwd=tmp_path)
    assert_one_line_error(error, "corral.toml", "unknown option 'server'")


def test_unknown_key_in_tool_corral(tmp_path: Path) -> None:
    pyproject = write(tmp_path / "pyproject.toml", "[tool.corral]\nthread_count = 3\n")
    with pytest.raises(ConfigError) as error:
        load_settings({}, environ={}, cwd=tmp_path)
    assert_one_line_error(error, str(pyproject), "unknown option 'thread_count'")


def test_tool_corral_must_be_a_table(tmp_path: Path) -> None:
    pyproject = write(tmp_path / "pyproject.toml", '[tool]\ncorral = "main:app"\n')
    with pytest.raises(ConfigError) as error:
        load_settings({}, config=str(pyproject), environ={}, cwd=tmp_path)
    assert_one_line_error(error, str(pyproject), "[tool.corral] must be a table")


# --- invalid values -------------------------------------------------------------------------------


def test_invalid_value_in_the_file_names_option_and_file(tmp_path: Path) -> None:
    config = write(tmp_path / "corral.toml", "timeout = -1\n")
    with pytest.raises(ConfigError) as error:
        load_settings({}, environ={}, cwd=tmp_path)
    assert_one_line_error(error, "invalid --timeout", f"({config})", "must be from 0.5 to 86,400 seconds")


def test_invalid_value_in_the_environment_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings({}, environ={"CORRAL_HTTP": "h3"}, cwd=tmp_path)
    assert_one_line_error(error, "invalid --http", "(env CORRAL_HTTP)")


def test_invalid_bind_names_the_address(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings({"bind": ["localhost"]}, environ={}, cwd=tmp_path)
    assert_one_line_error(error, "invalid --bind (command line)", "'localhost'", "HOST:PORT")


def test_empty_bind_from_the_environment(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings({}, environ={"CORRAL_BIND": ""}, cwd=tmp_path)
    assert_one_line_error(error, "invalid --bind (env CORRAL_BIND)", "at least one address")


def test_unknown_acme_challenge(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings({}, environ={"CORRAL_ACME_CHALLENGES": "http-01,dns-01"}, cwd=tmp_path)
    assert_one_line_error(error, "--acme-challenges", "dns-01")


@pytest.mark.parametrize(
    ("value", "workers"), [("auto", "auto"), (" AUTO ", "auto"), ("3", 3), (" 2 ", 2), (7, 7)]
)
def test_workers_values(value: Any, workers: Any) -> None:
    assert settings_from({"workers": value}).workers == workers


@pytest.mark.parametrize("value", ["0", 0, "many", "2.5"])
def test_workers_rejects(value: Any) -> None:
    with pytest.raises(ConfigError, match="invalid --workers"):
        settings_from({"workers": value})


@pytest.mark.parametrize("value", ["-1", "-0"])
def test_negative_worker_count_from_text_is_rejected(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings({}, environ={"WEB_CONCURRENCY": value}, cwd=tmp_path)
    assert_one_line_error(error, "--workers")


def test_settings_from_ignores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_WORKERS", "9")
    assert settings_from({}).workers == "auto"


def test_load_settings_reads_only_the_given_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_NAME", "from-the-process")
    resolved = load_settings({}, environ={}, cwd=tmp_path)
    assert (resolved.settings.name, resolved.sources["name"]) == ("corral", "default")


def test_settings_from_rejects_unknown_fields() -> None:
    with pytest.raises(ConfigError):
        settings_from({"thread_count": 2})


# --- sizes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("2000000", 2_000_000),
        ("512M", 512_000_000),
        ("512MB", 512_000_000),
        ("512MiB", 512 * 1024**2),
        ("512mi", 512 * 1024**2),
        ("1.5G", 1_500_000_000),
        ("1.5GiB", int(1.5 * 1024**3)),
        (" 64 kb ", 64_000),
        ("64Ki", 64 * 1024),
        ("2TiB", 2 * 1024**4),
        ("1T", 10**12),
        ("100b", 100),
        (4096, 4096),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "abc", "12 parsecs", "-1", "1.2.3", "1e9", "5 M B"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


def test_bad_max_memory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings({"max_memory": "lots"}, environ={}, cwd=tmp_path)
    assert_one_line_error(error, "invalid --max-memory (command line)", "not a size")


def test_max_memory_as_a_toml_integer(tmp_path: Path) -> None:
    write(tmp_path / "corral.toml", "max_memory = 800000000\n")
    assert load_settings({}, environ={}, cwd=tmp_path).settings.max_memory == 800_000_000


def test_max_memory_as_a_toml_float(tmp_path: Path) -> None:
    write(tmp_path / "corral.toml", "max_memory = 1.5e9\n")
    try:
        settings = load_settings({}, environ={}, cwd=tmp_path).settings
    except CorralError:
        return
    assert settings.max_memory == 1_500_000_000


def test_negative_max_memory_is_rejected(tmp_path: Path) -> None:
    write(tmp_path / "corral.toml", "max_memory = -5\n")
    with pytest.raises(ConfigError) as error:
        load_settings({}, environ={}, cwd=tmp_path)
    assert_one_line_error(error, "--max-memory")


# --- run_arguments --------------------------------------------------------------------------------


def every_option_changed() -> dict[str, Any]:
    return {
        "app": "pkg.main:make",
        "factory": True,
        "interface": "wsgi",
        "threads": 3,
        "app_dir": "src",
        "name": "shop",
        "bind": ["127.0.0.1:9000", "[::1]:9001", "unix:/run/shop.sock", "fd://3"],
        "workers": 3,
        "control": "/run/shop-control.sock",
        "preload": False,
        "state_dir": "/var/lib/shop",
        "timeout": 2.5,
        "graceful_timeout": 0,
        "worker_nice": 3,
        "startup_timeout": 45.0,
        "crash_limit": 2,
        "crash_window": 10,
        "backoff_max": 5,
        "max_requests": 100,
        "max_requests_jitter": 7,
        "max_memory": "512MiB",
        "http": "h11",
        "lifespan": "off",
        "log_level": "debug",
        "access_log": False,
        "keep_alive": 1.25,
        "header_timeout": 3.5,
        "max_request_line": 4096,
        "max_request_head": 32768,
        "max_headers": 50,
        "https": ["a.example", "b.example"],
        "http_bind": ["127.0.0.1:8080"],
        "acme_directory": "https://localhost:14000/dir",
        "acme_email": "ops@example.com",
        "acme_ca_bundle": "/etc/ca.pem",
        "acme_challenges": ["tls-alpn-01"],
        "certfile": "/etc/cert.pem",
        "keyfile": "/etc/key.pem",
        "hsts": True,
        "forwarded_allow_ips": ["10.0.0.0/8", "127.0.0.1"],
        "proxy_protocol": True,
        "user": "nobody",
        "group": "nogroup",
        "prestart": ["python manage.py migrate --noinput", "echo a, b"],
        "prestart_timeout": 90,
        "prestart_on_reload": True,
        "prestart_lock": "file:/run/shop.lock",
        "release": "v1.2.3",
        "admin_bind": "127.0.0.1:9999",
        "drain_delay": 0.5,
        "admin_token": "s3cret-token",
        "admin_token_file": "/etc/corral/token",
        "env_file": [".env", "prod.env"],
        "log_format": "json",
        "metrics": False,
        "autoscale": "2:6",
        "target_utilisation": "40:80",
        "autoscale_cooldown": 12.0,
        "host": "127.0.0.2",
        "port": 8001,
        "uds": "/tmp/app.sock",
        "fd": 3,
        "backlog": 100,
        "root_path": "/api",
        "ws": "wsproto",
        "ws_max_size": 1000,
        "ws_ping_interval": 5.0,
        "ws_ping_timeout": 6.0,
        "ws_per_message_deflate": False,
        "local_ca": True,
        "ssl_ca_certs": "/etc/ssl/clients.pem",
        "ssl_ciphers": "ECDHE+AESGCM",
        "log_config": "/etc/corral/logging.yaml",
        "use_colors": False,
        "reload": True,
        "reload_dir": ["templates"],
        "reload_include": ["*.py", "*.html"],
        "reload_exclude": ["*.tmp"],
        "limit_concurrency": 100,
        "header": ["X-Team: shop"],
        "server_header": True,
        "date_header": False,
        "http2": False,
        "h2_max_concurrent_streams": 50,
        "h2_max_header_list_size": 32768,
        "h2_max_resets": 100,
        "h2_max_control_frames": 500,
        "h2_send_timeout": 10.0,
    }


def test_run_arguments_of_defaults_is_empty() -> None:
    assert run_arguments(settings_from({})) == []


def test_run_arguments_rendering() -> None:
    settings = settings_from(
        {
            "app": "main:app",
            "preload": False,
            "hsts": True,
            "timeout": 10.0,
            "keep_alive": 0.5,
            "https": ["a", "b"],
        }
    )
    assert run_arguments(settings) == [
        "main:app",
        "--no-preload",
        "--timeout",
        "10",
        "--keep-alive",
        "0.5",
        "--https",
        "a",
        "--https",
        "b",
        "--hsts",
    ]


def test_run_arguments_round_trip_with_every_option(clean_cwd: Path) -> None:
    settings = settings_from(every_option_changed())
    for env_file in settings.env_file:  # `corral run` reads them (CORRAL_* variables)
        (clean_cwd / env_file).write_text("")
    for name, field in Settings.model_fields.items():
        assert getattr(settings, name) != field.get_default(call_default_factory=True), name
    assert parse_run_arguments(run_arguments(settings)).settings == settings


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"app": "main:app"},
        {"workers": 1, "timeout": 0.5},
        {"bind": ["unix:/tmp/x.sock"], "access_log": False},
        {"app": "main:app", "name": "9.looks_odd-", "prestart": ["--also"]},
        {"graceful_timeout": 1e-7, "max_memory": 16 * 1024**2 + 1},
    ],
)
def test_run_arguments_round_trip(clean_cwd: Path, values: dict[str, Any]) -> None:
    settings = settings_from(values)
    resolved = parse_run_arguments(run_arguments(settings))
    assert resolved.settings == settings
    given = {name for name in FIELDS if resolved.sources[name] == "command line"}
    assert given == {
        name
        for name, field in Settings.model_fields.items()
        if getattr(settings, name) != field.get_default(call_default_factory=True)
    }


def test_run_arguments_round_trip_from_loaded_layers(clean_cwd: Path) -> None:
    write(clean_cwd / "corral.toml", 'app = "main:app"\nworkers = 2\n')
    environ = {"CORRAL_BIND": "127.0.0.1:9000,127.0.0.1:9001", "CORRAL_HSTS": "1"}
    settings = load_settings({"timeout": 5.0}, environ=environ, cwd=clean_cwd).settings
    (clean_cwd / "corral.toml").unlink()
    assert parse_run_arguments(run_arguments(settings)).settings == settings


def test_run_arguments_round_trip_beside_the_config_file(clean_cwd: Path) -> None:
    write(clean_cwd / "corral.toml", "workers = 4\n")
    settings = parse_run_arguments(["main:app", "--workers", "auto"]).settings
    assert settings.workers == "auto"
    assert parse_run_arguments(run_arguments(settings)).settings == settings


def test_run_arguments_round_trip_of_an_empty_list(clean_cwd: Path) -> None:
    try:
        settings = load_settings({}, environ={"CORRAL_ACME_CHALLENGES": ""}, cwd=clean_cwd).settings
    except ConfigError:
        return  # refusing an empty list is a fix too
    assert parse_run_arguments(run_arguments(settings)).settings == settings


def test_options_mirror_every_setting_with_its_type() -> None:
    hints = typing.get_type_hints(Options)
    assert list(hints) == list(Settings.model_fields)
    for name, field in Settings.model_fields.items():
        assert hints[name] == field.annotation, name


def test_options_carry_the_validated_values_through_json() -> None:
    options = options_from({"app": "main:app", "workers": "3", "max_memory": "16MiB", "prestart": ["a, b"]})
    assert (options.workers, options.max_memory, options.prestart) == (3, 16 * 1024**2, ["a, b"])
    assert Options.loads(options.dumps()) == options


def test_https_without_bind_listens_on_443() -> None:
    assert options_from({"https": ["api.example.com"]}).bind == ["0.0.0.0:443"]
    assert options_from({"certfile": "c.pem"}).bind == ["0.0.0.0:443"]
    assert options_from({"https": ["localhost"], "bind": ["127.0.0.1:8443"]}).bind == ["127.0.0.1:8443"]
    assert options_from({"https": ["localhost"], "bind": ["127.0.0.1:8000"]}).bind == ["127.0.0.1:8000"]
    assert options_from({}).bind == ["127.0.0.1:8000"]


# --- the reference is the declaration -------------------------------------------------------------


def test_the_reference_tables_are_the_declaration() -> None:
    """docs/configuration.md's option and range tables are what `corral.reference` writes from the declaration
    (run `python -m corral.reference docs/configuration.md` after changing an option)."""
    from corral import reference

    page = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    assert reference.rewrite(page) == page
    table = page.split(reference.BEGIN.format("options table"), 1)[1].split(reference.END.format("options table"))[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert len(rows) == len(FIELDS)  # each option once (--log-format and --metrics were listed twice)
    for row, name in zip(rows, FIELDS, strict=True):
        assert f"`CORRAL_{name.upper()}`" in row, name


def test_a_bool_is_not_a_number(tmp_path: Path) -> None:
    """`workers = true` in [tool.corral] ran one worker; every option that is not a flag refuses true/false."""
    pyproject = write(tmp_path / "pyproject.toml", "[tool.corral]\nworkers = true\n")
    with pytest.raises(ConfigError) as error:
        load_settings({}, environ={}, cwd=tmp_path)
    assert str(error.value) == f"invalid --workers ({pyproject}): expected N|auto, got true"
    write(tmp_path / "pyproject.toml", "[tool.corral]\ntimeout = false\n")
    with pytest.raises(ConfigError) as error:
        load_settings({}, environ={}, cwd=tmp_path)
    assert str(error.value) == f"invalid --timeout ({pyproject}): expected SECONDS, got false"


@pytest.mark.parametrize(
    ("kind", "words"), [("directory", "is a directory, not a file"), ("dangling", "is a dangling symlink, not a file")]
)
def test_a_corral_toml_that_is_not_a_file_is_refused(tmp_path: Path, kind: str, words: str) -> None:
    config = tmp_path / "corral.toml"
    if kind == "directory":
        config.mkdir()
    else:
        config.symlink_to(tmp_path / "nowhere.toml")
    with pytest.raises(ConfigError) as error:
        load_settings({}, environ={}, cwd=tmp_path)
    assert str(error.value) == f"config file {config} {words}"


def test_config_that_is_a_device_says_what_it_is(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings({}, config="/dev/null", environ={}, cwd=tmp_path)
    assert str(error.value) == "config file /dev/null is a character device, not a file"


# --- the client commands' control socket, found without the settings model ------------------------


def test_control_path_layers(clean_cwd: Path) -> None:
    from corral.control_path import control_path

    write(clean_cwd / "corral.toml", 'control = "/run/from-file.sock"\n')
    assert control_path("/run/given.sock", None, environ={}) == Path("/run/given.sock")
    assert control_path(None, None, environ={"CORRAL_CONTROL": "/run/env.sock"}) == Path("/run/env.sock")
    assert control_path(None, "other", environ={}) == Path("/run/from-file.sock")


@pytest.mark.parametrize(
    ("text", "environ", "line"),
    [
        ('name = "a/b"\n', {}, "invalid --name ({file}): expected a plain name"),
        ("name = 5\n", {}, "invalid --name ({file}): expected a string, got 5"),
        ("", {"CORRAL_NAME": "../x"}, "invalid --name (env CORRAL_NAME): expected a plain name"),
        ("control = 5\n", {}, "invalid --control ({file}): expected a path"),
        ("workerz = 2\n", {}, "{file}: unknown option 'workerz'"),
    ],
)
def test_control_path_refuses_what_run_refuses(
    clean_cwd: Path, text: str, environ: dict[str, str], line: str
) -> None:
    from corral.control_path import control_path

    config = write(clean_cwd / "corral.toml", text)
    with pytest.raises(ConfigError) as error:
        control_path(None, None, environ=environ)
    assert_one_line_error(error, line.format(file=config))
