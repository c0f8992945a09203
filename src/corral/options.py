"""Every option of `corral run`, declared once, and the validated values as plain data.

Each field of `Options` is one option: its type and default, and in `option(...)` what the rest of Corral
derives from it: the command line (`cli_run.py`), the config-file and `CORRAL_*` validation (`config.py`,
pydantic), `corral config`, and the table in docs/configuration.md (`reference.py`). Checks beyond a type,
a choice and a range are an option's behaviour: they live in `validators.py`, keyed by its name.

The manager, the templates and the workers read only `Options`, so none of them imports pydantic: the template
tree of an app that does not use pydantic is about 10 MiB smaller for it (PSS, in the memory benchmark), and
the manager is one process more than gunicorn `--preload` has, so it must stay small. This module imports
only the standard library.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

MANAGER, TEMPLATE, WORKER = "manager", "template", "worker"
ALL = (MANAGER, TEMPLATE, WORKER)
SECONDS = "SECONDS"


class Spec(NamedTuple):
    """What an option is besides its type and default. `low`/`high`/`unit`: the range of a number (a value
    outside it, inf or nan is refused with one line); `used_by`: the processes that read it."""

    help: str
    metavar: str = ""
    short: str = ""
    low: float | None = None
    high: float | None = None
    unit: str = ""
    negatable: bool = True  # a bool option: --x/--no-x, or only --x
    secret: bool = False
    used_by: tuple[str, ...] = (MANAGER,)
    default_text: str = ""  # the default in words, when it is decided at run time
    details: str = ""  # more for the reference than the command line's help
    range_text: str = ""  # the reference's "Ranges" row, for checks that are not low-high
    env_alias: str = ""  # another variable honoured below CORRAL_* (WEB_CONCURRENCY)
    aliases: tuple[str, ...] = ()  # other flags for the same option, the names users bring (--timeout-keep-alive)


def option(default: Any, help: str, **spec: Any) -> Any:
    """One option's declaration, as a dataclass field (a list default is copied for each instance)."""
    metadata = {"spec": Spec(help, **spec)}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


_T = (TEMPLATE, WORKER)
_TLS = (MANAGER, WORKER)  # the certificate plan: the manager obtains, each worker serves


@dataclass(frozen=True)
class Options:
    # The app
    app: str | None = option(
        None, "module:attr, path/to/file.py[:attr]; default: discover", metavar="APP", used_by=(MANAGER,)
    )
    factory: bool = option(False, "APP names a factory to call for the ASGI app", negatable=False, used_by=_T)
    interface: Literal["auto", "asgi", "wsgi"] = option(
        "auto", "ASGI or WSGI app (auto: detected from the callable)", metavar="auto|asgi|wsgi", used_by=_T
    )
    threads: int = option(
        8, "threads per worker that run a WSGI app's requests", metavar="N", low=1, high=1024, unit="threads",
        used_by=_T,
    )
    app_dir: str | None = option(None, "directory added to the import path", metavar="PATH", used_by=(MANAGER,))
    name: str = option(
        "corral", "instance name; names the default control socket", metavar="NAME",
        range_text="1 to 64 letters, digits, `.`, `_` or `-`, starting with a letter or digit (no `/`)",
    )

    # Sockets and pool
    bind: list[str] = option(  # noqa: RUF009  (a list default is copied per instance)
        ["127.0.0.1:8000"], "HOST:PORT, [::1]:PORT, unix:PATH or fd://N (repeatable)", metavar="HOST:PORT",
        short="-b", used_by=_TLS, details="; a `unix:` socket is made mode 0666 in a directory others cannot write "
        "in (sticky ones such as /tmp are fine); only your own stale socket is replaced, a symlink or any other file "
        "there is refused",
    )
    workers: int | Literal["auto"] = option(
        "auto", "worker processes, or auto", metavar="N|auto", short="-w", default_text="auto: from the CPUs or "
        "CPU quota", env_alias="WEB_CONCURRENCY", range_text="1 to 256, or `auto`",
    )
    control: str | None = option(None, "control socket path (default: per --name)", metavar="PATH")
    host: str | None = option(
        None, "listen on HOST (with --port; one more listener beside --bind)", metavar="HOST",
        default_text="127.0.0.1 when --port is given",
    )
    port: int | None = option(
        None, "listen on PORT (with --host)", metavar="PORT", low=0, high=65535, unit="",
        default_text="8000 when --host is given",
    )
    uds: str | None = option(None, "listen on this UNIX socket (same as --bind unix:PATH)", metavar="PATH")
    fd: int | None = option(
        None, "serve an inherited listening socket (same as --bind fd://N)", metavar="N", low=0, high=65535,
        unit="",
    )
    backlog: int = option(
        2048, "the listen queue's length (connections accepted by the kernel, not yet by a worker)", metavar="N",
        low=1, high=1_000_000, unit="connections", details="; the kernel caps it at net.core.somaxconn",
        used_by=(MANAGER, WORKER),
    )
    preload: bool = option(True, "import the app once in a template and fork workers", used_by=(MANAGER, TEMPLATE))
    state_dir: str | None = option(None, "state directory (certificates, locks)", metavar="PATH")

    # Timeouts and restarts
    timeout: float = option(
        30.0, "seconds a worker's event loop may stay blocked", metavar=SECONDS, low=0.5, high=86400,
        unit="seconds", used_by=(MANAGER, WORKER),
    )
    graceful_timeout: float = option(
        30.0, "seconds a draining worker may take", metavar=SECONDS, low=0, high=3600, unit="seconds",
        aliases=("--timeout-graceful-shutdown",),
    )
    worker_nice: int = option(
        0, "run the workers N nice levels below the manager and template", metavar="N", low=0, high=19,
        unit="levels", used_by=(WORKER,),
        details="(CPU priority): when the workers keep every CPU busy, the manager, the template and the parked "
        "spares still get one at once, so crashed workers are replaced, and health checks and `corral` commands "
        "answered, without waiting behind them. A parked spare takes it when it is promoted. Within a container "
        "or a systemd service only Corral's own processes compete; elsewhere the workers also yield to the "
        "host's other processes",
    )
    startup_timeout: float = option(
        120.0, "seconds the app's import, then a new worker's start, may each take", metavar=SECONDS, low=1,
        high=86400, unit="seconds", details="(lifespan startup included)",
    )
    crash_limit: int = option(
        5, "failed starts within --crash-window that stop corral (exit 4)", metavar="N", low=1, high=1_000_000,
        unit="crashes", details="(a worker dead before it answered a request or stayed ready 1 s, a template "
        "dead), with no worker staying ready 1 s in between; crashes of proven workers never count",
    )
    crash_window: float = option(
        60.0, "seconds over which failed starts are counted", metavar=SECONDS, low=1, high=86400, unit="seconds"
    )
    backoff_max: float = option(
        30.0, "longest restart delay of a slot after failed starts in a row, in seconds", metavar=SECONDS, low=0.1,
        high=3600, unit="seconds",
    )
    max_requests: int | None = option(
        None, "recycle a worker after N requests", metavar="N", low=1, high=1_000_000_000, unit="requests",
        used_by=(MANAGER, WORKER), aliases=("--limit-max-requests",),
    )
    max_requests_jitter: int = option(
        0, "random extra requests before recycling", metavar="N", low=0, high=1_000_000_000, unit="requests",
        aliases=("--limit-max-requests-jitter",),
    )
    max_memory: int | None = option(
        None, "recycle a worker whose private memory passes SIZE", metavar="SIZE",
        details="(checked every 50 ms); kill it at 1.5 × SIZE",  # noqa: RUF001
        range_text="16MiB to 1TiB (below 16 MiB a Python worker would be recycled as soon as it starts)",
    )

    # HTTP
    http: Literal["auto", "h11", "httptools"] = option(
        "auto", "HTTP/1.1 implementation", metavar="auto|h11|httptools", used_by=_T
    )
    lifespan: Literal["auto", "on", "off"] = option(
        "auto", "ASGI lifespan handling", metavar="auto|on|off", used_by=_T
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = option(
        "info", "critical, error, warning, info or debug", metavar="LEVEL", used_by=ALL
    )
    access_log: bool = option(
        True, "log each request", details=": client, request line, status, body bytes, latency, worker id",
        used_by=_T,
    )
    keep_alive: float = option(
        5.0, "seconds an idle keep-alive connection stays open", metavar=SECONDS, low=0.1, high=3600,
        unit="seconds", used_by=_T, aliases=("--timeout-keep-alive",),
    )
    header_timeout: float = option(
        10.0, "seconds a request head may take to arrive; a slower one is closed (--http auto)", metavar=SECONDS,
        low=0.5, high=3600, unit="seconds", used_by=_T,
    )
    max_request_line: int = option(
        8192, "longest request line in bytes; 414 beyond (--http auto)", metavar="BYTES", low=256, high=1024**2,
        unit="bytes", used_by=_T, aliases=("--limit-request-line",),
    )
    max_request_head: int = option(
        65536, "largest request head (line and headers) in bytes; 431 beyond (--http auto)", metavar="BYTES",
        low=1024, high=16 * 1024**2, unit="bytes", used_by=_T,
        aliases=("--limit-request-field_size", "--h11-max-incomplete-event-size"),
    )
    max_headers: int = option(
        100, "most request header fields; 431 beyond (--http auto)", metavar="N", low=10, high=10_000,
        unit="header fields", used_by=_T, aliases=("--limit-request-fields",),
    )
    root_path: str = option(
        "", "the path prefix a proxy serves the app under (ASGI `root_path`)", metavar="PATH", used_by=_T,
        details="; the request's `path` then starts with it, as with uvicorn",
    )
    ws: Literal["auto", "none", "websockets", "websockets-sansio", "wsproto"] = option(
        "auto", "WebSocket implementation, or none", metavar="auto|none|websockets|websockets-sansio|wsproto",
        used_by=_T,
    )
    ws_max_size: int = option(
        16_777_216, "largest WebSocket message accepted, in bytes", metavar="BYTES", low=1, high=2**31,
        unit="bytes", used_by=_T,
    )
    ws_ping_interval: float = option(
        20.0, "seconds between WebSocket pings", metavar=SECONDS, low=0.1, high=86400, unit="seconds", used_by=_T
    )
    ws_ping_timeout: float = option(
        20.0, "seconds a WebSocket ping waits for its pong before the connection closes", metavar=SECONDS, low=0.1,
        high=86400, unit="seconds", used_by=_T,
    )
    ws_per_message_deflate: bool = option(True, "WebSocket per-message compression", used_by=_T)
    limit_concurrency: int | None = option(
        None, "answer 503 to a request that finds its worker holding N connections or N requests", metavar="N",
        low=1, high=1_000_000, unit="connections", used_by=_T,
        details=" (per worker, its own connection included, as uvicorn counts)",
    )
    header: list[str] = option(  # noqa: RUF009  (a list default is copied per instance)
        [], "NAME:VALUE header added to every response (repeatable)", metavar="NAME:VALUE", used_by=_T
    )
    server_header: bool = option(False, "send `Server: corral`", used_by=_T)
    date_header: bool = option(True, "send a `Date` header", used_by=_T)

    # HTTP/2
    http2: bool = option(
        True, "serve HTTP/2: h2 by ALPN on HTTPS listeners, h2c by prior knowledge on plain ones", used_by=_T,
        details=" (h2c with `--http auto` only; see http2.md)",
    )
    h2_max_concurrent_streams: int = option(
        100, "HTTP/2 streams a connection may have open at once", metavar="N", low=1, high=10_000, unit="streams",
        used_by=_T, details="; also bounds the app tasks of a connection, reset streams whose app still runs included",
    )
    h2_max_header_list_size: int = option(
        65536, "largest decoded HTTP/2 request header list in bytes", metavar="BYTES", low=1024, high=16 * 1024**2,
        unit="bytes", used_by=_T, details="; a larger one, or a larger header block in CONTINUATION frames, ends "
        "the connection (GOAWAY ENHANCE_YOUR_CALM)",
    )
    h2_max_resets: int = option(
        200, "HTTP/2 streams a client may reset within 10 s", metavar="N", low=1, high=1_000_000, unit="resets",
        used_by=_T, details="; beyond, the connection ends with GOAWAY ENHANCE_YOUR_CALM (rapid reset, "
        "CVE-2023-44487)",
    )
    h2_max_control_frames: int = option(
        1000, "HTTP/2 control frames (SETTINGS, PING, PRIORITY, WINDOW_UPDATE) a client may send per second",
        metavar="N", low=10, high=1_000_000, unit="frames", used_by=_T,
        details=", plus two per DATA frame sent to it; beyond, GOAWAY ENHANCE_YOUR_CALM",
    )
    h2_send_timeout: float = option(
        30.0, "seconds an HTTP/2 response may wait on a client that reads nothing", metavar=SECONDS, low=0.1,
        high=3600, unit="seconds", used_by=_T,
        details=" (a zero flow-control window, a full socket buffer); then its stream is reset (CANCEL)",
    )

    # HTTPS
    https: list[str] = option(  # noqa: RUF009  (a list default is copied per instance)
        [], "domain name to serve over HTTPS (repeatable)", metavar="DOMAIN", used_by=_TLS,
        details="; localhost, IP addresses and reserved names get a local-CA certificate (see https.md)",
    )
    http_bind: list[str] = option(  # noqa: RUF009  (a list default is copied per instance)
        [], "plain-HTTP listener for challenges and redirects (repeatable)", metavar="HOST:PORT"
    )
    acme_directory: str | None = option(
        None, "ACME directory URL (https://)", metavar="URL", default_text="Let's Encrypt",
        details="; given, it also certifies reserved names (`*.test`, `*.internal`...), never IP addresses or "
        "localhost (see https.md)", used_by=_TLS,
    )
    acme_email: str | None = option(None, "contact address for the ACME account", metavar="EMAIL")
    acme_ca_bundle: str | None = option(None, "CA bundle trusted for the ACME server", metavar="PATH")
    acme_challenges: list[str] = option(  # noqa: RUF009  (a list default is copied per instance)
        ["http-01", "tls-alpn-01"], "allowed challenges, preferred first", metavar="CHALLENGE"
    )
    local_ca: bool = option(
        False, "every --https name gets a local-CA certificate, none goes to ACME", used_by=_TLS,
        default_text="on in `corral dev`",
    )
    certfile: str | None = option(
        None, "certificate chain (PEM) managed elsewhere", metavar="PATH", used_by=_TLS, aliases=("--ssl-certfile",)
    )
    keyfile: str | None = option(
        None, "private key (PEM) for --certfile", metavar="PATH", used_by=_TLS, aliases=("--ssl-keyfile",)
    )
    ssl_ca_certs: str | None = option(
        None, "CA bundle that client certificates must chain to: HTTPS clients must present one", metavar="PATH",
        used_by=_TLS, details=" (mutual TLS)",
    )
    ssl_ciphers: str | None = option(
        None, "OpenSSL cipher list for TLS 1.2", metavar="CIPHERS", used_by=_TLS, default_text="OpenSSL's",
        details=" (TLS 1.3's suites are OpenSSL's; TLS 1.2 is the lowest version served)",
    )
    hsts: bool = option(False, "send Strict-Transport-Security", used_by=_T)
    forwarded_allow_ips: list[str] = option(  # noqa: RUF009  (a list default is copied per instance)
        [], "CIDRs whose proxy headers are trusted", metavar="CIDR", used_by=_T
    )
    proxy_protocol: bool = option(False, "expect the PROXY protocol (v1/v2)", used_by=_T)
    user: str | None = option(None, "drop privileges to this user", metavar="USER", used_by=(MANAGER, TEMPLATE))
    group: str | None = option(None, "drop privileges to this group", metavar="GROUP", used_by=(MANAGER, TEMPLATE))

    # Steps before starting, health
    prestart: list[str] = option([], "command run once before serving (repeatable)", metavar="COMMAND")  # noqa: RUF009
    prestart_timeout: float = option(
        600.0, "seconds a pre-start step may take", metavar=SECONDS, low=1, high=86400, unit="seconds"
    )
    prestart_on_reload: bool = option(False, "rerun the pre-start steps on reload")
    prestart_lock: str | None = option(
        None, "file:PATH or postgresql:// URL", metavar="file:PATH|postgresql://URL",
        details=" (a URL's password is shown as `***`)",
    )
    release: str | None = option(None, "release id: run the pre-start steps once per release", metavar="ID")
    admin_bind: str | None = option(
        None, "address of /livez, /readyz, /metrics and the dashboard (:PORT: loopback)", metavar="HOST:PORT",
        details="; off loopback a token is required ([monitoring.md](monitoring.md#access-to-the-admin-listener))",
    )
    drain_delay: float = option(
        0.0, "seconds to keep serving after SIGTERM", metavar=SECONDS, low=0, high=3600, unit="seconds"
    )
    admin_token: str | None = option(
        None, "token the admin listener requires off loopback", metavar="TOKEN", secret=True,
        details=" (`Authorization: Bearer`)",
    )
    admin_token_file: str | None = option(
        None, "file whose first line is the admin token", metavar="PATH", details=" (preferred: not visible in `ps`)"
    )

    # The app's environment, logs
    env_file: list[str] = option(  # noqa: RUF009  (a list default is copied per instance)
        [], "dotenv file loaded into the app's processes (repeatable)", metavar="PATH",
        details="; the environment wins, a later file wins; `CORRAL_*` in it configure Corral; see deployment.md",
    )
    log_format: Literal["text", "json"] = option(
        "text", "text or json, for every log line", metavar="text|json", used_by=ALL,
        details=" of the manager, templates and workers (uvicorn's own lines included)",
    )
    log_config: str | None = option(
        None, "logging configuration (dictConfig, JSON or YAML) applied in every process", metavar="PATH",
        used_by=ALL, details=", after Corral's own: its loggers are `corral`, `corral.access` and `uvicorn.*`;"
        " read, and its files opened, before `--user` drops privileges (workers keep their template's)",
    )
    use_colors: bool | None = option(
        None, "colour the level and status of text log lines", used_by=ALL, default_text="on a terminal",
    )
    metrics: bool = option(
        True, "count requests and latency, and gather the app's metrics", used_by=ALL,
        details=" (prometheus_client); `/metrics` on `--admin-bind`",
    )

    # Autoscaling
    autoscale: str | None = option(
        None, "MIN:MAX: grow and shrink the pool within this range", metavar="MIN:MAX",
        details="; `--workers` is then the starting size ([autoscaling.md](autoscaling.md))",
        range_text="1 ≤ MIN ≤ MAX ≤ 256",
    )
    target_utilisation: str = option(
        "50:90", "LOW:HIGH percent band of the workers' busy time the autoscaler keeps", metavar="LOW:HIGH",
        range_text="1 ≤ LOW < HIGH ≤ 100",
    )
    autoscale_cooldown: float = option(
        30.0, "seconds of low use after a growth before the autoscaler shrinks the pool", metavar=SECONDS, low=1,
        high=3600, unit="seconds",
    )

    # Development (`corral dev` turns --reload on)
    reload: bool = option(
        False, "watch the app's source and reload on each change", default_text="on in `corral dev`",
        details=" (a new generation; the old one serves until the new code answers)",
    )
    reload_dir: list[str] = option(  # noqa: RUF009  (a list default is copied per instance)
        [], "another directory to watch (repeatable)", metavar="PATH", default_text="the app's package or directory",
    )
    reload_include: list[str] = option(  # noqa: RUF009  (a list default is copied per instance)
        ["*.py"], "glob of the files whose change reloads (repeatable)", metavar="GLOB"
    )
    reload_exclude: list[str] = option(  # noqa: RUF009  (a list default is copied per instance)
        [".*", "*.py[cod]", "*~"], "glob of the files whose change is ignored (repeatable)", metavar="GLOB",
        details="; virtual environments, `__pycache__`, `.git` and the state directory are never watched",
    )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def dumps(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def loads(cls, text: str) -> Options:
        """Options written by `dumps` in the same version of Corral (already validated, so not checked again)."""
        return cls(**json.loads(text))


def specs() -> dict[str, Spec]:
    """Each option's name and `Spec`, in declaration order."""
    return {field.name: field.metadata["spec"] for field in dataclasses.fields(Options)}
