"""Log lines of every Corral process (manager, templates, workers, uvicorn's own) in one format: text or JSON.

Shared and small: the manager, the templates and the workers call `configure` once. uvicorn is given
`log_config=None`, so its loggers (`uvicorn.error`, `uvicorn.access`) write through the handler set here
instead of their own `INFO:     ...` format. In JSON each line is one object with `time`, `level`,
`logger`, `pid`, `message`, the process's role (and worker id), and the fields a caller passed in `extra`
(the access log's status, bytes, latency).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

# Loggers whose lines Corral formats; each gets the one handler, none propagates to the root logger.
LOGGERS = ("corral", "uvicorn")
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}


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


def formatter(log_format: str, role: str, **fields: Any) -> logging.Formatter:
    """`role` names the process in text lines (`corral`, `template 2`, `worker 3`); JSON has it as fields."""
    if log_format == "json":
        return JsonFormatter({"process": role.split()[0], **fields})
    return logging.Formatter(f"%(asctime)s [{role}] %(levelname)s %(message)s", "%H:%M:%S")


def configure(log_format: str, level: str, role: str, **fields: Any) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format, role, **fields))
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
    for name in ("uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    logging.getLogger("corral").setLevel(level.upper())
    logging.getLogger("uvicorn").setLevel(level.upper())
