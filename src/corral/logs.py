"""Log lines of every Corral process (manager, templates, workers, uvicorn's own) in one format: text or JSON.

Shared and small: the manager, the templates and the workers call `configure` once. uvicorn is given
`log_config=None`, so its loggers (`uvicorn.error`, `uvicorn.access`) write through the handler set here
instead of their own `INFO:     ...` format. In JSON each line is one object with `time`, `level`,
`logger`, `pid`, `message`, the process's role (and worker id), and the fields a caller passed in `extra`
(the access log's status, bytes, latency). A worker forked from its template keeps the template's
configuration, --log-config's handlers included, and only names itself (`reconfigure`).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from corral.errors import ConfigError

# Loggers whose lines Corral formats; each gets the one handler, none propagates to the root logger.
LOGGERS = ("corral", "uvicorn")
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}


@dataclass
class _Configured:
    """What `configure` and --log-config set in this process, which a forked worker sets again (`reconfigure`)."""

    style: tuple[str, str, bool] = ("text", "info", False)
    # The loggers --log-config named: their handlers (open files included), level, propagation, disabled flag.
    applied: list[tuple[logging.Logger, list[logging.Handler], int, bool, bool]] = field(default_factory=list)


_configured = _Configured()


class JsonFormatter(logging.Formatter):
    def __init__(self, fields: dict[str, Any]) -> None:
        super().__init__()
        self.fields = fields

    def format(self, record: logging.LogRecord) -> str:
        seconds = int(record.created)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        data: dict[str, Any] = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            **self.fields,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                data[key] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            data["stack"] = record.stack_info
        return json.dumps(data, default=str)


_LEVEL_COLOURS = {"DEBUG": "36", "INFO": "32", "WARNING": "33", "ERROR": "31", "CRITICAL": "1;31"}
_STATUS_COLOURS = {1: "37", 2: "32", 3: "36", 4: "33", 5: "31"}


class ColourFormatter(logging.Formatter):
    """The text format with its level, and an access line's status, in ANSI colours (for a terminal)."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        level = record.levelname
        text = text.replace(f"] {level} ", f"] \033[{_LEVEL_COLOURS.get(level, '0')}m{level}\033[0m ", 1)
        status = record.__dict__.get("status")
        if isinstance(status, int):
            code = f'" {status} '
            text = text.replace(code, f'" \033[{_STATUS_COLOURS.get(status // 100, "0")}m{status}\033[0m ', 1)
        return text


def use_colors(setting: bool | None) -> bool:
    """--use-colors / --no-use-colors, or, when neither is given, whether stderr is a terminal."""
    if setting is not None:
        return setting
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def formatter(log_format: str, role: str, colors: bool = False, **fields: Any) -> logging.Formatter:
    """`role` names the process in text lines (`corral`, `template 2`, `worker 3`); JSON has it as fields."""
    if log_format == "json":
        return JsonFormatter({"process": role.split()[0], **fields})
    kind = ColourFormatter if colors else logging.Formatter
    return kind(f"%(asctime)s [{role}] %(levelname)s %(message)s", "%H:%M:%S")


def read_log_config(path: str) -> dict[str, Any]:
    """--log-config: a dictConfig as JSON, or YAML (.yaml, .yml); a bad file is one line (exit 2)."""
    try:
        text = open(path, encoding="utf-8").read()  # noqa: SIM115 - read at once
        if path.endswith((".yaml", ".yml")):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # the file, its decoding, JSON's or YAML's errors
        raise ConfigError(f"--log-config {path}: {' '.join(str(exc).split())[:200] or type(exc).__name__}") from None
    if not isinstance(data, dict) or "version" not in data:
        raise ConfigError(f"--log-config {path}: expected a logging dictConfig (a mapping with version: 1)")
    return data


def apply_log_config(path: str) -> None:
    """Apply --log-config over Corral's own configuration; loggers it does not name keep Corral's."""
    import logging.config

    data = read_log_config(path)
    data.setdefault("disable_existing_loggers", False)
    try:
        logging.config.dictConfig(data)
    except Exception as exc:  # dictConfig wraps a handler's own error (a file it cannot open) as the cause
        reasons = [str(exc)] + ([str(exc.__cause__)] if exc.__cause__ is not None else [])
        raise ConfigError(f"--log-config {path}: {' '.join(': '.join(reasons).split())[:300]}") from None
    names = [name for name in data.get("loggers") or {} if isinstance(name, str)] + ["root"] * ("root" in data)
    loggers = [logging.getLogger(None if name == "root" else name) for name in names]
    _configured.applied = [(lg, list(lg.handlers), lg.level, lg.propagate, lg.disabled) for lg in loggers]


def configure_from(settings: Any, role: str, **fields: Any) -> None:
    """`configure` from a process's options (`corral.options.Options`), then their --log-config."""
    configure(settings.log_format, settings.log_level, role, use_colors(settings.use_colors), **fields)
    if settings.log_config:
        apply_log_config(settings.log_config)


def reconfigure(role: str, **fields: Any) -> None:
    """`configure_from` in a worker forked from the template, without reading --log-config again: the loggers it
    named get back the handlers the template made from it. A worker may have dropped the privileges that read
    the file and opened its log files; the app's import may have changed Corral's loggers since."""
    log_format, level, colors = _configured.style
    applied = list(_configured.applied)
    configure(log_format, level, role, colors, **fields)
    for logger, handlers, logger_level, propagate, disabled in applied:
        logger.handlers[:] = handlers
        logger.setLevel(logger_level)
        logger.propagate, logger.disabled = propagate, disabled
    _configured.applied = applied


def configure(log_format: str, level: str, role: str, colors: bool = False, **fields: Any) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format, role, colors, **fields))
    _configured.style, _configured.applied = (log_format, level, colors), []
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
    for name in ("uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    logging.getLogger("corral").setLevel(level.upper())
    logging.getLogger("uvicorn").setLevel(level.upper())
