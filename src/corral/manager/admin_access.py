"""Who may use `--admin-bind`: a token, required when the listener is reachable from other machines.

`/livez`, `/readyz` and the dashboard's static files (which hold no data) stay open, so probes and the browser
page work without it; everything else (`/api/...`, `/metrics`) needs `Authorization: Bearer TOKEN`. A
listener reachable from other machines with no token configured (a container's probe port, say) serves only
those open paths. Actions
(POST) also need a JSON body and, when the browser sends an Origin, the listener's own origin: a page of
another site cannot make an operator's browser reload or scale the pool. Without a token (loopback only),
the Host header must name an IP address or localhost, so a DNS-rebinding page cannot read the API either.
"""

from __future__ import annotations

import hmac
import inspect
import ipaddress
from pathlib import Path
from urllib.parse import urlsplit

from corral.errors import ConfigError
from corral.manager.admin import Handler, Request, Response, Route
from corral.options import Options

OPEN_PATHS = ("/livez", "/readyz", "/dashboard")
OPEN_PREFIXES = ("/dashboard/",)


def load_token(settings: Options) -> str | None:
    """The token from --admin-token, or the first line of --admin-token-file (one clear line if unreadable)."""
    if settings.admin_token_file:
        try:
            lines = Path(settings.admin_token_file).read_text().strip().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise ConfigError(f"--admin-token-file {settings.admin_token_file}: cannot read: {reason}") from None
        if not lines or not lines[0].strip():
            raise ConfigError(f"--admin-token-file {settings.admin_token_file} is empty")
        return lines[0].strip()
    return settings.admin_token or None


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def protect(routes: dict[str, Route], token: str | None, exposed: bool) -> dict[str, Route]:
    """The same routes, each checking access before its handler runs; `exposed`: not bound to loopback."""
    return {
        path: Route(_guard(path, route.handler, token, exposed), route.methods) for path, route in routes.items()
    }


def refusal(request: Request, token: str | None, path: str, exposed: bool = False) -> Response | None:
    """None when `request` may go on; else the answer that refuses it."""
    if request.method == "POST":
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return Response.json(415, {"error": "actions take a JSON body (content-type: application/json)"})
        origin = request.headers.get("origin")
        if origin and urlsplit(origin).netloc != request.headers.get("host", ""):
            return Response.json(403, {"error": "cross-origin request refused"})
    if is_open(path):
        return None
    if token is None and exposed:
        return Response.json(403, {"error": "this admin listener is reachable from other machines and has no "
                                            "token: only /livez and /readyz are served (see --admin-token-file)"})
    if token is None:
        if not _local_host(request.headers.get("host", "")):
            return Response.json(403, {"error": "the Host header must name an IP address or localhost"})
        return None
    given = request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
        return Response(
            401, b'{"error": "a valid token is required: Authorization: Bearer TOKEN"}',
            headers=(("www-authenticate", 'Bearer realm="corral"'),),
        )
    return None


def _guard(path: str, handler: Handler, token: str | None, exposed: bool) -> Handler:
    async def guarded(request: Request) -> Response:
        refused = refusal(request, token, path, exposed)
        if refused is not None:
            return refused
        result = handler(request)
        if inspect.isawaitable(result):
            result = await result
        return result

    return guarded


def _local_host(host: str) -> bool:
    name = urlsplit(f"//{host}").hostname or ""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def admin_access_text(token: bool, exposed: bool) -> str:
    """Who may read what on the admin listener, in the banner's words (what `check` and `allowed` decide)."""
    if token:
        who = "token required (Authorization: Bearer)"
    elif exposed:
        who = "not served: reachable from other machines and no token (--admin-token-file)"
    else:
        who = "this machine only (loopback, no token)"
    return f"/livez, /readyz: open; /metrics, /dashboard: {who}"
