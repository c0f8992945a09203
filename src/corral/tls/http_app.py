"""ASGI pieces around the app when HTTPS is on: the plain-HTTP listener (ACME HTTP-01 answers and a 308
redirect to HTTPS), Strict-Transport-Security, and proxy headers trusted only from given networks."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from corral.tls.store import Store

Scope = MutableMapping[str, Any]
ASGIReceiveCallable = Callable[[], Awaitable[Any]]
ASGISendCallable = Callable[[Any], Awaitable[None]]
ASGI3Application = Callable[[Scope, ASGIReceiveCallable, ASGISendCallable], Awaitable[None]]


CHALLENGE_PREFIX = "/.well-known/acme-challenge/"
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
HSTS_VALUE = b"max-age=31536000"


async def _respond(
    send: ASGISendCallable, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


class ChallengeApp:
    """The plain-HTTP listener: `/.well-known/acme-challenge/<token>` from the state directory, every other
    request redirected (308) to the same host and path over HTTPS."""

    def __init__(self, challenge_dir: Path, https_port: int) -> None:
        self.challenge_dir = challenge_dir
        self.https_port = https_port

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path.startswith(CHALLENGE_PREFIX):
            token = path[len(CHALLENGE_PREFIX) :]
            try:
                body = (self.challenge_dir / token).read_bytes() if _TOKEN.fullmatch(token) else None
            except OSError:
                body = None
            if body is None:
                await _respond(send, 404, b"unknown challenge\n", [(b"content-type", b"text/plain")])
            else:
                await _respond(send, 200, body, [(b"content-type", b"application/octet-stream")])
            return
        await _respond(send, 308, b"", [(b"location", self.location(scope).encode("latin-1"))])

    def location(self, scope: Scope) -> str:
        host = ""
        for name, value in scope["headers"]:
            if name == b"host":
                host = value.decode("latin-1")
                break
        if not host and scope.get("server"):
            host = str(scope["server"][0])
        if host.startswith("["):
            host = host[: host.index("]") + 1]
        else:
            host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        port = "" if self.https_port == 443 else f":{self.https_port}"
        raw = scope.get("raw_path") or scope["path"].encode()
        target = raw.decode("latin-1")
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        return f"https://{host}{port}{target}"


class HSTSMiddleware:
    """Adds Strict-Transport-Security to every HTTPS response."""

    def __init__(self, app: ASGI3Application, value: bytes = HSTS_VALUE) -> None:
        self.app = app
        self.value = value

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] != "http" or scope.get("scheme") != "https":
            await self.app(scope, receive, send)
            return

        async def send_with_hsts(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    h for h in message.get("headers", []) if h[0].lower() != b"strict-transport-security"
                ]
                message = {**message, "headers": [*headers, (b"strict-transport-security", self.value)]}
            await send(message)

        await self.app(scope, receive, send_with_hsts)


class TrustedNetworks:
    """Addresses given as IPs or CIDRs ('*' trusts everyone)."""

    def __init__(self, entries: list[str]) -> None:
        self.everyone = "*" in entries
        self.networks = [ipaddress.ip_network(item, strict=False) for item in entries if item != "*"]

    def __contains__(self, host: object) -> bool:
        if self.everyone:
            return True
        try:
            address = ipaddress.ip_address(str(host))
        except ValueError:
            return False
        return any(address in network for network in self.networks)


def _forwarded_pairs(value: str) -> list[dict[str, str]]:
    """RFC 7239 `Forwarded`: comma-separated elements of semicolon-separated key=value pairs."""
    elements = []
    for element in value.split(","):
        pairs: dict[str, str] = {}
        for pair in element.split(";"):
            key, _, item = pair.strip().partition("=")
            if key:
                pairs[key.lower()] = item.strip().strip('"')
        elements.append(pairs)
    return elements


def _forwarded_host(node: str) -> str:
    """`for=` node: '192.0.2.1', '192.0.2.1:80', '[2001:db8::1]:80', or an obfuscated name."""
    if node.startswith("["):
        return node[1 : node.find("]")] if "]" in node else node
    return node.split(":", 1)[0] if node.count(":") == 1 else node


class ForwardedMiddleware:
    """Client address and scheme from `Forwarded` (preferred) or `X-Forwarded-For`/`-Proto`, trusted only
    when the connection comes from one of the trusted networks. The client is the rightmost address that
    is not itself trusted (proxies append)."""

    def __init__(self, app: ASGI3Application, trusted: list[str]) -> None:
        self.app = app
        self.trusted = TrustedNetworks(trusted)

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        client = scope.get("client")
        if scope["type"] in ("http", "websocket") and client and client[0] in self.trusted:
            self._apply(scope)
        await self.app(scope, receive, send)

    def _apply(self, scope: Any) -> None:
        forwarded: list[str] = []
        x_for: list[str] = []
        x_proto: str | None = None
        for name, value in scope["headers"]:
            if name == b"forwarded":
                forwarded.append(value.decode("latin-1"))
            elif name == b"x-forwarded-for":
                x_for.append(value.decode("latin-1"))
            elif name == b"x-forwarded-proto":
                x_proto = value.decode("latin-1")
        hosts: list[str]
        proto: str | None
        if forwarded:
            elements = _forwarded_pairs(",".join(forwarded))
            hosts = [_forwarded_host(e["for"]) for e in elements if "for" in e]
            protos = [e["proto"] for e in elements if "proto" in e]
            proto = protos[-1] if protos else None
        else:
            hosts = [item.strip() for item in ",".join(x_for).split(",") if item.strip()]
            proto = x_proto.split(",")[-1].strip() if x_proto else None
        if proto and proto.lower() in ("http", "https"):
            scheme = proto.lower()
            scope["scheme"] = scheme.replace("http", "ws") if scope["type"] == "websocket" else scheme
        for host in reversed(hosts):
            if host not in self.trusted or host == hosts[0]:
                scope["client"] = (host, 0)
                break


def wrap_app(
    app: ASGI3Application,
    *,
    https: bool,
    hsts: bool,
    forwarded_allow_ips: list[str],
    store: Store | None,
    https_port: int,
) -> ASGI3Application:
    """The app as the worker serves it: plain-HTTP requests go to the challenge/redirect app when HTTPS is
    on; HTTPS requests get HSTS; proxy headers are honoured from trusted networks only."""
    wrapped: ASGI3Application = app
    if forwarded_allow_ips:
        wrapped = ForwardedMiddleware(wrapped, forwarded_allow_ips)
    if hsts:
        wrapped = HSTSMiddleware(wrapped)
    if not https or store is None:
        return wrapped
    challenges = ChallengeApp(store.root / "challenges" / "http-01", https_port)
    inner = wrapped

    async def dispatch(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] == "http" and scope.get("scheme") == "http":
            await challenges(scope, receive, send)
        elif scope["type"] == "websocket" and scope.get("scheme") == "ws":
            await send({"type": "websocket.close", "code": 1008})
        else:
            await inner(scope, receive, send)

    return dispatch
