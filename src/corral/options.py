"""The validated options of `corral run` as plain data.

`corral.config.Settings` parses and checks the options (pydantic); `Settings.options()` turns the result
into an `Options`. The manager, the templates and the workers read only `Options`, so none of them imports
pydantic: the template tree of an app that does not use pydantic is about 10 MiB smaller for it (PSS, in
the memory benchmark), and the manager is one process more than gunicorn `--preload` has, so it must stay
small. The fields mirror `Settings` one for one (a unit test keeps them in step).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Options:
    app: str | None
    factory: bool
    app_dir: str | None
    name: str
    bind: list[str]
    workers: int | Literal["auto"]
    control: str | None
    preload: bool
    state_dir: str | None
    timeout: float
    graceful_timeout: float
    startup_timeout: float
    crash_limit: int
    crash_window: float
    backoff_max: float
    max_requests: int | None
    max_requests_jitter: int
    max_memory: int | None
    http: Literal["auto", "h11", "httptools"]
    lifespan: Literal["auto", "on", "off"]
    log_level: Literal["critical", "error", "warning", "info", "debug"]
    access_log: bool
    keep_alive: float
    header_timeout: float
    max_request_line: int
    max_request_head: int
    max_headers: int
    https: list[str]
    http_bind: list[str]
    acme_directory: str | None
    acme_email: str | None
    acme_ca_bundle: str | None
    acme_challenges: list[str]
    certfile: str | None
    keyfile: str | None
    hsts: bool
    forwarded_allow_ips: list[str]
    proxy_protocol: bool
    user: str | None
    group: str | None
    prestart: list[str]
    prestart_timeout: float
    prestart_on_reload: bool
    prestart_lock: str | None
    release: str | None
    admin_bind: str | None
    drain_delay: float
    admin_token: str | None
    admin_token_file: str | None
    env_file: list[str]
    log_format: Literal["text", "json"]
    metrics: bool
    autoscale: str | None
    target_utilisation: str
    autoscale_cooldown: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def dumps(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def loads(cls, text: str) -> Options:
        """Options written by `dumps` in the same version of Corral (already validated, so not checked again)."""
        return cls(**json.loads(text))
