"""One settings model: command line > environment (CORRAL_*) > corral.toml / [tool.corral] > defaults.

Every option is defined once, as a field of `Settings`. `load_settings` resolves the layers with
pydantic-settings and records where each value came from, for `corral config`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from corral.errors import ConfigError
from corral.manager.policy import parse_range
from corral.options import Options
from corral.scoreboard import MAX_WORKERS
from corral.tls.plan import https_enabled

ENV_PREFIX = "CORRAL_"

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
    "ti": 1024**4,
    "tib": 1024**4,
}


# The range of every number (low, high, unit): a value outside gets one line naming it. The same ranges are
# stated in docs/configuration.md ("Ranges"); tests/test_bounds.py keeps the two in step.
BOUNDS: dict[str, tuple[float, float, str]] = {
    "timeout": (0.5, 86400, "seconds"),
    "graceful_timeout": (0, 3600, "seconds"),
    "startup_timeout": (1, 86400, "seconds"),
    "crash_limit": (1, 1_000_000, "crashes"),
    "crash_window": (1, 86400, "seconds"),
    "backoff_max": (0.1, 3600, "seconds"),
    "max_requests": (1, 1_000_000_000, "requests"),
    "max_requests_jitter": (0, 1_000_000_000, "requests"),
    "keep_alive": (0.1, 3600, "seconds"),
    "header_timeout": (0.5, 3600, "seconds"),
    "max_request_line": (256, 1024**2, "bytes"),
    "max_request_head": (1024, 16 * 1024**2, "bytes"),
    "max_headers": (10, 10_000, "header fields"),
    "prestart_timeout": (1, 86400, "seconds"),
    "drain_delay": (0, 3600, "seconds"),
}
MIN_MEMORY = 16 * 1024**2  # below a Python worker's own footprint: every worker would be recycled at once
MAX_MEMORY = 1024**4
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


def parse_size(text: object) -> int:
    """'512M', '1.5GiB', '2000000' -> bytes. K/M/G are decimal, Ki/Mi/Gi binary."""
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise ValueError(f"not a size: {text!r} (examples: 512MiB, 1.5G, 800000000)")
    if isinstance(text, float) and not math.isfinite(text):
        raise ValueError(f"not a size: {text!r} (examples: 512MiB, 1.5G, 800000000)")
    if isinstance(text, int | float):
        return int(text)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"not a size: {text!r} (examples: 512MiB, 1.5G, 800000000)")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def _split_list(value: Any) -> Any:
    """Environment variables give lists as comma-separated strings, or as a JSON array when an item holds a
    comma (a pre-start command, say)."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            items = json.loads(value)
        except ValueError:
            raise ValueError("starts with [ but is not a JSON array of strings") from None
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise ValueError("starts with [ but is not a JSON array of strings")
        return items
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


StrList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    """Every option of `corral run`. Field docs are the configuration reference."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    # The app
    app: str | None = Field(None, description="APP: module:attr, path/to/file.py[:attr], or discovered")
    factory: bool = Field(False, description="APP names a factory to call for the ASGI app")
    app_dir: str | None = Field(None, description="directory added to the import path")
    name: str = Field("corral", description="instance name; names the default control socket")

    # Sockets and pool
    bind: StrList = Field(
        default_factory=lambda: ["127.0.0.1:8000"],
        description="HOST:PORT, [::1]:PORT, unix:PATH or fd://N (repeatable)",
    )
    workers: int | Literal["auto"] = Field("auto", description="worker processes, or auto (CPU quota)")
    control: str | None = Field(None, description="control socket path (default: per --name)")
    preload: bool = Field(True, description="import the app once in a template and fork workers")
    state_dir: str | None = Field(None, description="state directory (certificates, locks)")

    # Timeouts and restarts
    timeout: float = Field(30.0, gt=0, description="seconds a worker's event loop may stay blocked")
    graceful_timeout: float = Field(30.0, ge=0, description="seconds a draining worker may take")
    startup_timeout: float = Field(
        120.0, gt=0, description="seconds the app's import, then a new worker's start, may each take"
    )
    crash_limit: int = Field(5, ge=1, description="crashes within --crash-window that stop corral")
    crash_window: float = Field(60.0, gt=0, description="seconds over which crashes are counted")
    backoff_max: float = Field(30.0, gt=0, description="longest restart delay of a slot, in seconds")
    max_requests: int | None = Field(None, ge=1, description="recycle a worker after N requests")
    max_requests_jitter: int = Field(0, ge=0, description="random extra requests before recycling")
    max_memory: int | None = Field(None, description="recycle a worker whose private memory passes SIZE")

    # HTTP
    http: Literal["auto", "h11", "httptools"] = Field("auto", description="HTTP/1.1 implementation")
    lifespan: Literal["auto", "on", "off"] = Field("auto", description="ASGI lifespan handling")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field("info")
    access_log: bool = Field(True, description="log each request")
    keep_alive: float = Field(5.0, gt=0, description="seconds an idle keep-alive connection stays open")
    header_timeout: float = Field(10.0, gt=0, description="seconds a request head may take to arrive (--http auto)")
    max_request_line: int = Field(8192, ge=1, description="longest request target in bytes, 414 beyond (--http auto)")
    max_request_head: int = Field(65536, ge=1, description="largest request head in bytes, 431 beyond (--http auto)")
    max_headers: int = Field(100, ge=1, description="most request header fields, 431 beyond (--http auto)")

    # HTTPS
    https: StrList = Field(default_factory=list, description="domain names to serve over HTTPS")
    http_bind: StrList = Field(default_factory=list, description="plain-HTTP listener (challenges, redirect)")
    acme_directory: str | None = Field(
        None,
        description="ACME directory URL (default: Let's Encrypt; given, it also certifies reserved names)",
    )
    acme_email: str | None = Field(None, description="contact address for the ACME account")
    acme_ca_bundle: str | None = Field(None, description="CA bundle trusted for the ACME server")
    acme_challenges: StrList = Field(
        default_factory=lambda: ["http-01", "tls-alpn-01"], description="allowed challenges, preferred first"
    )
    certfile: str | None = Field(None, description="certificate chain managed elsewhere")
    keyfile: str | None = Field(None, description="private key for --certfile")
    hsts: bool = Field(False, description="send Strict-Transport-Security")
    forwarded_allow_ips: StrList = Field(
        default_factory=list, description="CIDRs whose proxy headers are trusted"
    )
    proxy_protocol: bool = Field(False, description="expect the PROXY protocol (v1/v2)")
    user: str | None = Field(None, description="drop privileges to this user")
    group: str | None = Field(None, description="drop privileges to this group")

    # Steps before starting, health
    prestart: StrList = Field(default_factory=list, description="commands run once before serving")
    prestart_timeout: float = Field(600.0, gt=0, description="seconds a pre-start step may take")
    prestart_on_reload: bool = Field(False, description="rerun the pre-start steps on reload")
    prestart_lock: str | None = Field(None, description="file:PATH or postgresql:// URL")
    release: str | None = Field(None, description="release id: run the pre-start steps once per release")
    admin_bind: str | None = Field(None, description="address of /livez, /readyz and the dashboard (:PORT: loopback)")
    drain_delay: float = Field(0.0, ge=0, description="seconds to keep serving after SIGTERM")
    admin_token: str | None = Field(None, description="token the admin listener requires (non-loopback)")
    admin_token_file: str | None = Field(None, description="file holding the admin token")

    # The app's environment, logs
    env_file: StrList = Field(default_factory=list, description="dotenv file loaded into the app's processes")
    log_format: Literal["text", "json"] = Field("text", description="text or json, for every log line")
    metrics: bool = Field(True, description="count requests and latency, and gather the app's metrics")

    # Autoscaling
    autoscale: str | None = Field(None, description="MIN:MAX: grow and shrink the pool within this range")
    target_utilisation: str = Field("50:90", description="LOW:HIGH percent band the autoscaler keeps")
    autoscale_cooldown: float = Field(
        30.0, ge=1, le=3600, description="seconds of low use after a growth before the autoscaler shrinks"
    )

    @field_validator(
        "bind", "https", "http_bind", "acme_challenges", "forwarded_allow_ips", "prestart", "env_file",
        mode="before",
    )
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split_list(value)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only the values given: `load_settings` resolves the layers itself, to know each value's source."""
        return (init_settings,)

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip().lower()
            if text == "auto":
                return "auto"
            try:
                value = int(text)
            except ValueError:
                raise ValueError(f"expected a number of workers or auto, got {value!r}") from None
        if isinstance(value, int) and not isinstance(value, bool) and not 1 <= value <= MAX_WORKERS:
            raise ValueError(f"must be from 1 to {MAX_WORKERS}, or auto")
        return value

    @field_validator(*BOUNDS, mode="before")
    @classmethod
    def _bounded(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None or isinstance(value, bool):
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            return value  # not a number: pydantic's own message says so
        low, high, unit = BOUNDS[str(info.field_name)]
        if not (math.isfinite(number) and low <= number <= high):  # NaN fails every comparison
            raise ValueError(f"must be from {_number(low)} to {_number(high)} {unit}, got {value}")
        return value

    @field_validator("max_memory", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        if value is None or value == "":
            return None
        size = parse_size(value)
        if not MIN_MEMORY <= size <= MAX_MEMORY:
            raise ValueError(f"must be from 16MiB to 1TiB, got {value}")
        return size

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.fullmatch(value):
            raise ValueError(
                f"expected a plain name: 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or "
                f"digit (no '/'), got {value[:80]!r}"
            )
        return value

    @model_validator(mode="after")
    def _pairs(self) -> Settings:
        if self.keyfile and not self.certfile:
            raise ValueError("--keyfile needs --certfile (the certificate it is the key of)")
        if self.prestart_lock and not self.prestart:
            raise ValueError("--prestart-lock needs --prestart (the steps it serialises)")
        return self

    @field_validator("bind")
    @classmethod
    def _binds(cls, value: list[str]) -> list[str]:
        from corral.binds import parse_bind

        if not value:
            raise ValueError("at least one address is needed")
        for item in value:
            parse_bind(item)
        return value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            if item != "*":
                try:
                    ipaddress.ip_network(item, strict=False)
                except ValueError:
                    raise ValueError(f"{item!r} is not an IP address or CIDR (for example 10.0.0.0/8, or *)") from None
        return value

    @field_validator("admin_bind")
    @classmethod
    def _admin_bind(cls, value: str | None) -> str | None:
        from corral.binds import parse_admin_bind

        if value is not None and parse_admin_bind(value).kind == "fd":
            raise ValueError("the admin listener takes HOST:PORT, :PORT (loopback) or unix:PATH")
        return value

    @field_validator("autoscale")
    @classmethod
    def _autoscale(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        low, high = parse_range(value, "MIN:MAX workers, for example 1:8")
        if not 1 <= low <= high <= MAX_WORKERS:
            raise ValueError(f"expected 1 <= MIN <= MAX <= {MAX_WORKERS}, got {value!r}")
        return f"{low}:{high}"

    @field_validator("target_utilisation")
    @classmethod
    def _band(cls, value: str) -> str:
        low, high = parse_range(value, "LOW:HIGH percent, for example 50:90")
        if not 1 <= low < high <= 100:
            raise ValueError(f"expected 1 <= LOW < HIGH <= 100 (percent), got {value!r}")
        return f"{low}:{high}"

    @field_validator("acme_challenges")
    @classmethod
    def _challenges(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one challenge is needed (http-01, tls-alpn-01)")
        for item in value:
            if item not in ("http-01", "tls-alpn-01"):
                raise ValueError(f"unknown challenge {item!r} (http-01, tls-alpn-01)")
        return value

    def options(self) -> Options:
        """The values as plain data for `corral run`'s processes; with HTTPS and no --bind, the app listens
        on 0.0.0.0:443."""
        options = Options(**self.model_dump())
        if https_enabled(options) and "bind" not in self.model_fields_set:
            options = dataclasses.replace(options, bind=["0.0.0.0:443"])
        return options


FIELDS: tuple[str, ...] = tuple(Settings.model_fields)


@dataclass(frozen=True)
class Resolved:
    settings: Settings
    sources: dict[str, str]
    config_file: Path | None


def find_config_file(explicit: str | None, cwd: Path) -> tuple[Path | None, bool]:
    """The file to read and whether it is a pyproject.toml (values under [tool.corral])."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"config file not found: {explicit}")
        return path, path.name == "pyproject.toml"
    if (cwd / "corral.toml").is_file():
        return cwd / "corral.toml", False
    pyproject = cwd / "pyproject.toml"
    if pyproject.is_file():
        data = _read_toml(pyproject)
        tool = data.get("tool")
        if isinstance(tool, dict) and "corral" in tool:
            return pyproject, True
    return None, False


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: malformed TOML: {exc}") from exc


def read_config_file(path: Path, is_pyproject: bool) -> dict[str, Any]:
    data = _read_toml(path)
    if is_pyproject:
        tool = data.get("tool", {})
        data = tool.get("corral", {}) if isinstance(tool, dict) else {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: [tool.corral] must be a table")
    values: dict[str, Any] = {}
    for key, value in data.items():
        field = key.replace("-", "_")
        if field not in Settings.model_fields:
            raise ConfigError(f"{path}: unknown option {key!r}")
        values[field] = value
    return values


def _env_values(environ: Mapping[str, str]) -> dict[str, Any]:
    source = EnvSettingsSource(Settings, env_prefix=ENV_PREFIX, case_sensitive=False)
    source.env_vars = {key.lower(): value for key, value in environ.items()}
    return source()


def load_settings(
    cli: Mapping[str, Any],
    config: str | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Resolved:
    """Resolve the layers; `cli` holds only the options given on the command line."""
    environ = os.environ if environ is None else environ
    cwd = cwd or Path.cwd()
    config = config or environ.get(f"{ENV_PREFIX}CONFIG")
    path, is_pyproject = find_config_file(config, cwd)
    file_values = read_config_file(path, is_pyproject) if path else {}
    env_values = _env_values(environ)
    given = {key: value for key, value in cli.items() if value is not None}

    sources: dict[str, str] = {}
    merged: dict[str, Any] = {}
    for field in FIELDS:
        if field in given:
            merged[field], sources[field] = given[field], "command line"
        elif field in env_values:
            merged[field], sources[field] = env_values[field], f"env {ENV_PREFIX}{field.upper()}"
        elif field == "workers" and environ.get("WEB_CONCURRENCY"):
            merged[field], sources[field] = environ["WEB_CONCURRENCY"], "env WEB_CONCURRENCY"
        elif field in file_values:
            merged[field], sources[field] = file_values[field], str(path)
        else:
            sources[field] = "default"
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, sources)) from exc
    return Resolved(settings, sources, path)


def _describe(exc: ValidationError, sources: Mapping[str, str]) -> str:
    error = exc.errors()[0]
    message = str(error["msg"]).removeprefix("Value error, ")
    if not error["loc"]:  # a rule between options names them itself
        return f"invalid options: {message}"
    field = str(error["loc"][0])
    where = sources.get(field, "?")
    option = "--" + field.replace("_", "-")
    return f"invalid {option} ({where}): {message}"


def settings_from(values: Mapping[str, Any]) -> Settings:
    """A Settings from plain values only (no environment, no file): used by exports and tests."""
    try:
        return Settings.model_validate(dict(values))
    except ValidationError as exc:
        raise ConfigError(_describe(exc, {})) from exc



def run_arguments(settings: Settings) -> list[str]:
    """The `corral run` arguments that reproduce `settings` (used by the exports).

    Options left at their default are left out; one set explicitly is kept even at its default value, so a
    `corral.toml` beside the exported command cannot override it. The app comes first, as `corral run APP`.
    """
    args: list[str] = [settings.app] if settings.app else []
    for name, field in Settings.model_fields.items():
        if name == "app":
            continue
        value = getattr(settings, name)
        default = field.get_default(call_default_factory=True)
        if value is None or (value == default and name not in settings.model_fields_set):
            continue
        option = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            args.append(option if value else "--no-" + name.replace("_", "-"))
        elif isinstance(value, list):
            for item in value:
                args += [option, str(item)]
        elif isinstance(value, float) and value.is_integer():
            args += [option, str(int(value))]
        else:
            args += [option, str(value)]
    return args
