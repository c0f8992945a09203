"""One settings model: command line > environment (CORRAL_*) > corral.toml / [tool.corral] > defaults.

`Settings` is built from the declaration of every option (`corral.options`): its fields are the fields of
`Options`, checked by pydantic, by the ranges declared there and by `corral.validators`. `load_settings`
resolves the layers itself and records where each value came from, for `corral config`.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field, ValidationError, ValidationInfo, create_model, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from corral import validators
from corral.config_file import find_config_file, read_config_file
from corral.errors import ConfigError
from corral.options import Options, Spec, specs
from corral.tls.plan import https_enabled
from corral.validators import MAX_MEMORY, MIN_MEMORY, check_range, parse_size, split_list

__all__ = [
    "BOUNDS", "FIELDS", "MAX_MEMORY", "MIN_MEMORY", "ConfigError", "Resolved", "Settings", "load_settings",
    "parse_size", "run_arguments", "settings_from",
]  # fmt: skip

ENV_PREFIX = "CORRAL_"
SPECS: dict[str, Spec] = specs()
TYPES: dict[str, Any] = typing.get_type_hints(Options)
FIELDS: tuple[str, ...] = tuple(SPECS)
# The range of every number (low, high, unit), from the declaration.
BOUNDS: dict[str, tuple[float, float, str]] = {
    name: (spec.low, spec.high, spec.unit)
    for name, spec in SPECS.items()
    if spec.low is not None and spec.high is not None
}
_LISTS = tuple(name for name, kind in TYPES.items() if typing.get_origin(kind) is list)


def default_of(name: str) -> Any:
    """An option's declared default (a fresh list for a list)."""
    field = Options.__dataclass_fields__[name]
    factory: Callable[[], Any] | Any = field.default_factory
    return factory() if callable(factory) else field.default


def _field(name: str) -> tuple[Any, Any]:
    kind, spec = TYPES[name], SPECS[name]
    if name in _LISTS:
        kind = Annotated[kind, NoDecode]  # a list from the environment is split by `_before`, never JSON-decoded
        return kind, Field(default_factory=lambda: default_of(name), description=spec.help)
    return kind, Field(default_of(name), description=spec.help)


def _before(cls: type[Any], value: Any, info: ValidationInfo) -> Any:
    """Every check that must see the value as given: no true/false for a number, lists from strings, ranges,
    and the option's own check, if any."""
    name = str(info.field_name)
    spec = SPECS[name]
    if isinstance(value, bool) and TYPES[name] not in (bool, bool | None):
        raise ValueError(f"expected {spec.metavar or 'a value'}, got {str(value).lower()}")
    if name in _LISTS:
        value = split_list(value)
    if name in BOUNDS:
        value = check_range(value, *BOUNDS[name])
    check = validators.BEFORE.get(name)
    return check(value) if check else value


def _after(cls: type[Any], value: Any, info: ValidationInfo) -> Any:
    return validators.AFTER[str(info.field_name)](value)


def _pairs(self: Any) -> Any:
    for name, needed, why in validators.PAIRS:
        if getattr(self, name) and not getattr(self, needed):
            raise ValueError(f"{_flag(name)} needs {_flag(needed)} ({why})")
    return self


class _Base(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

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

    def options(self) -> Options:
        """The values as plain data for `corral run`'s processes; with HTTPS and no --bind, the app listens
        on 0.0.0.0:443."""
        options = Options(**self.model_dump())
        explicit = "bind" in self.model_fields_set
        if https_enabled(options) and not explicit:
            options = dataclasses.replace(options, bind=["0.0.0.0:443"])
        named = validators.named_listeners(options.host, options.port, options.uds, options.fd)
        if named:
            options = dataclasses.replace(options, bind=[*(options.bind if explicit else []), *named])
        return options


def _build() -> type[_Base]:
    namespace: dict[str, Any] = {
        "before": field_validator(*FIELDS, mode="before")(_before),
        "after": field_validator(*validators.AFTER)(_after),
        "pairs": model_validator(mode="after")(_pairs),
    }
    model: type[_Base] = create_model(  # type: ignore[call-overload]
        "Settings",
        __base__=_Base,
        __doc__="Every option of `corral run`, validated (built from `corral.options.Options`).",
        __validators__=namespace,
        __module__=__name__,
        **{name: _field(name) for name in FIELDS},
    )
    return model


if TYPE_CHECKING:

    class Settings(_Base, Options):  # type: ignore[misc]  # the checker's view: the fields of Options
        pass

else:
    Settings = _build()


@dataclass(frozen=True)
class Resolved:
    settings: Settings
    sources: dict[str, str]
    config_file: Path | None


def _env_values(environ: Mapping[str, str]) -> dict[str, Any]:
    source = EnvSettingsSource(Settings, env_prefix=ENV_PREFIX, case_sensitive=False)
    source.env_vars = {key.lower(): value for key, value in environ.items()}
    return source()


def load_settings(
    cli: Mapping[str, Any],
    config: str | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> Resolved:
    """Resolve the layers; `cli` holds only the options given on the command line; `defaults` replace the
    declared defaults (`corral dev`'s)."""
    environ = os.environ if environ is None else environ
    cwd = cwd or Path.cwd()
    config = config or environ.get(f"{ENV_PREFIX}CONFIG")
    path, is_pyproject = find_config_file(config, cwd)
    file_values = read_config_file(path, is_pyproject, FIELDS) if path else {}
    env_values = _env_values(environ)
    given = {key: value for key, value in cli.items() if value is not None}

    sources: dict[str, str] = {}
    merged: dict[str, Any] = {}
    for field in FIELDS:
        alias = SPECS[field].env_alias
        if field in given:
            merged[field], sources[field] = given[field], "command line"
        elif field in env_values:
            merged[field], sources[field] = env_values[field], f"env {ENV_PREFIX}{field.upper()}"
        elif alias and environ.get(alias):
            merged[field], sources[field] = environ[alias], f"env {alias}"
        elif field in file_values:
            merged[field], sources[field] = file_values[field], str(path)
        elif defaults and field in defaults:
            merged[field], sources[field] = defaults[field], "corral dev"
        else:
            sources[field] = "default"
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, sources)) from exc
    return Resolved(settings, sources, path)


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def _describe(exc: ValidationError, sources: Mapping[str, str]) -> str:
    error = exc.errors()[0]
    message = str(error["msg"]).removeprefix("Value error, ")
    if not error["loc"]:  # a rule between options names them itself
        return f"invalid options: {message}"
    field = str(error["loc"][0])
    return f"invalid {_flag(field)} ({sources.get(field, '?')}): {message}"


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
    for name in FIELDS:
        if name == "app":
            continue
        value = getattr(settings, name)
        if value is None or (value == default_of(name) and name not in settings.model_fields_set):
            continue
        option = _flag(name)
        if isinstance(value, bool):
            if value or SPECS[name].negatable:
                args.append(option if value else "--no-" + name.replace("_", "-"))
        elif isinstance(value, list):
            for item in value:
                args += [option, str(item)]
        elif isinstance(value, float) and value.is_integer():
            args += [option, str(int(value))]
        else:
            args += [option, str(value)]
    return args
