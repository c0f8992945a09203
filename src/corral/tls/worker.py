"""HTTPS in a worker: the live SSL contexts (reloaded in place on a signal) and the connection router.

The router is set as uvicorn's `http_protocol_class` with `ssl=None`. For each accepted connection it
 - reads a PROXY protocol header first when `--proxy-protocol` is on;
 - on a plain-HTTP listener hands the connection to uvicorn's protocol as is;
 - otherwise wraps it in the event loop's own SSL protocol (uvloop's when uvloop runs) around uvicorn's.
While a TLS-ALPN-01 challenge is pending it first reads the ClientHello: a client offering `acme-tls/1`
for a name with a pending challenge gets the challenge certificate and is closed after the handshake;
any other client gets the normal certificate. Otherwise no byte is read before TLS starts, and the data
path is the same as uvicorn's own `ssl=` path.
Until uvicorn's protocol gets a connection, it is listed in `DrainState.arriving`: a draining worker waits for it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from pathlib import Path
from typing import Any

from corral.options import Options
from corral.tls.alpn import ACME_TLS_1
from corral.tls.certs import covers
from corral.tls.clienthello import NotClientHello, parse_client_hello, record_length
from corral.tls.names import file_label
from corral.tls.plan import CertificatePlan, certificate_plans, https_enabled
from corral.tls.proxyprotocol import ProxyInfo, ProxyProtocolError, parse_proxy_header
from corral.tls.store import Store
from corral.worker.protocols import DrainState

logger = logging.getLogger("corral.tls")

HANDSHAKE_TIMEOUT = 30.0
HEADER_TIMEOUT = 10.0
MAX_RECORD = 16384 + 5 + 256


def _ssl_protocol_class(loop: asyncio.AbstractEventLoop) -> Any:
    """The loop's SSL protocol: uvloop's compiled one under uvloop, asyncio's otherwise."""
    if type(loop).__module__.startswith("uvloop"):
        import uvloop.loop

        return getattr(uvloop.loop, "SSLProtocol")  # noqa: B009 - not in uvloop's stubs
    from asyncio.sslproto import SSLProtocol

    return SSLProtocol


def server_context(ciphers: str | None = None, ca_certs: str | None = None, http2: bool = False) -> ssl.SSLContext:
    """TLS 1.2 and up; --ssl-ciphers for TLS 1.2; --ssl-ca-certs: clients must show a certificate it signed;
    ALPN offers `h2` first with --http2."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2", "http/1.1"] if http2 else ["http/1.1"])
    if ciphers:
        context.set_ciphers(ciphers)
    if ca_certs:
        context.load_verify_locations(ca_certs)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class WorkerTLS:
    """The certificates a worker serves, as live `SSLContext`s; `reload()` swaps them in place."""

    def __init__(
        self, store: Store, plans: list[CertificatePlan], proxy_protocol: bool = False, ciphers: str | None = None,
        ca_certs: str | None = None, http2: bool = False,
    ) -> None:
        self.store = store
        self.plans = plans
        self.proxy_protocol = proxy_protocol
        self.contexts = {plan.label: server_context(ciphers, ca_certs, http2) for plan in plans}
        # a client without SNI connected by address: only the local certificate covers addresses
        self.context = self.contexts["local" if "local" in self.contexts else plans[0].label]
        if len(plans) > 1:
            self.context.sni_callback = self._select_by_name
        self._challenge_dir = store.root / "challenges" / "tls-alpn-01"
        self._challenge_mtime = -1
        self._challenge_names: set[str] = set()
        self._challenge_contexts: dict[str, tuple[int, ssl.SSLContext]] = {}
        self.reload()

    @classmethod
    def from_settings(cls, settings: Options, state_dir: Path) -> WorkerTLS | None:
        """None when the configuration serves no HTTPS."""
        if not https_enabled(settings):
            return None
        return cls(Store(state_dir), certificate_plans(settings), settings.proxy_protocol, settings.ssl_ciphers,
                   settings.ssl_ca_certs, settings.http2)

    def reload(self) -> None:
        """Load the manager's validated copies into the live contexts: new handshakes get them, open
        connections keep theirs. A file that fails to load leaves the current certificate serving."""
        for label, context in self.contexts.items():
            path = self.store.current_path(label)
            try:
                context.load_cert_chain(path)
            except (OSError, ssl.SSLError) as exc:
                logger.error("certificate %s not reloaded, the current one keeps serving: %s", path, exc)

    def _select_by_name(self, sslobj: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: Any) -> None:
        if name is None:
            return
        for plan in self.plans:
            if covers(list(plan.names), name):
                sslobj.context = self.contexts[plan.label]
                return

    # TLS-ALPN-01
    def challenge_pending(self) -> bool:
        """One stat per new connection: the directory's mtime says when the listing must be re-read."""
        try:
            mtime = os.stat(self._challenge_dir).st_mtime_ns
        except OSError:
            return False
        if mtime != self._challenge_mtime:
            self._challenge_mtime = mtime
            self._challenge_names = {
                entry.name[: -len(".pem")]
                for entry in os.scandir(self._challenge_dir)
                if entry.name.endswith(".pem")
            }
        return bool(self._challenge_names)

    def challenge_context(self, server_name: str | None) -> ssl.SSLContext | None:
        if server_name is None or file_label(server_name) not in self._challenge_names:
            return None
        path = self._challenge_dir / f"{file_label(server_name)}.pem"
        try:
            mtime = os.stat(path).st_mtime_ns
            cached = self._challenge_contexts.get(server_name)
            if cached is not None and cached[0] == mtime:
                return cached[1]
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.set_alpn_protocols([ACME_TLS_1])
            context.load_cert_chain(path)
        except (OSError, ssl.SSLError):
            return None
        self._challenge_contexts[server_name] = (mtime, context)
        return context

    def protocol_class(
        self, inner: type[asyncio.Protocol], plain_sockets: list[socket.socket],
        h2_class: type[asyncio.Protocol] | None = None,
    ) -> type[asyncio.Protocol]:
        """uvicorn's `http` protocol class for all listeners (config `http=`; keep `ssl` unset); a TLS connection
        whose client chose `h2` by ALPN goes to `h2_class`."""
        return router_class(inner, self, plain_sockets, self.proxy_protocol, h2_class)


def _addresses(sockets: list[socket.socket]) -> set[Any]:
    found: set[Any] = set()
    for sock in sockets:
        name = sock.getsockname()
        found.add(name[:2] if isinstance(name, tuple) else name)
    return found


def _is_plain(sockname: Any, plain: set[Any]) -> bool:
    if not isinstance(sockname, tuple):
        return sockname in plain
    host, port = sockname[:2]
    return (host, port) in plain or ("0.0.0.0", port) in plain or ("::", port) in plain


class _CloseAfterHandshake(asyncio.Protocol):
    """The ACME validator only needs the handshake."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


def router_class(
    inner: type[asyncio.Protocol],
    tls: WorkerTLS | None,
    plain_sockets: list[socket.socket],
    proxy_protocol: bool,
    h2_class: type[asyncio.Protocol] | None = None,
) -> type[asyncio.Protocol]:
    """A protocol class that routes each connection as described in the module docstring."""
    plain = _addresses(plain_sockets)
    app_class: Any = _with_proxy_addresses(inner) if proxy_protocol else inner
    h2_app_class: Any = _with_proxy_addresses(h2_class) if proxy_protocol and h2_class is not None else h2_class

    class Router(asyncio.Protocol):
        def __init__(self, **kwargs: Any) -> None:
            self._kwargs = kwargs
            self._app = app_class(**kwargs)
            self._state: DrainState = kwargs["server_state"]
            self._loop: asyncio.AbstractEventLoop = kwargs.get("_loop") or asyncio.get_running_loop()
            self._transport: Any = None
            self._buffer = b""
            self._secure = False
            self._peek_hello = False
            self._awaiting_proxy = proxy_protocol
            self._timer: asyncio.TimerHandle | None = None
            self.h2_class = h2_app_class

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self._transport = transport
            self._secure = tls is not None and not _is_plain(transport.get_extra_info("sockname"), plain)
            self._peek_hello = self._secure and tls is not None and tls.challenge_pending()
            if self._secure or self._awaiting_proxy:
                self._state.arrive(transport, self._app)
            if not self._awaiting_proxy and not self._peek_hello:
                self._hand_over(None)
                return
            self._timer = self._loop.call_later(HEADER_TIMEOUT, transport.close)

        def data_received(self, data: bytes) -> None:
            self._buffer += data
            try:
                if self._awaiting_proxy:
                    parsed = parse_proxy_header(self._buffer)
                    if parsed is None:
                        return
                    info, size = parsed
                    self._buffer = self._buffer[size:]
                    self._awaiting_proxy = False
                    if info.client is not None:
                        self._app.corral_proxy = info
                    if not self._peek_hello:
                        self._hand_over(None)
                        return
                needed = record_length(self._buffer)
                if needed is None or len(self._buffer) < needed:
                    if needed is not None and needed > MAX_RECORD:
                        raise NotClientHello("record too long")
                    return
                hello = parse_client_hello(self._buffer[:needed])
            except (ProxyProtocolError, NotClientHello):
                self._transport.close()
                return
            context = None
            if ACME_TLS_1 in hello.alpn and tls is not None:
                context = tls.challenge_context(hello.server_name)
            self._hand_over(context)

        def eof_received(self) -> bool | None:
            self._transport.close()
            return None

        def connection_lost(self, exc: Exception | None) -> None:
            self._state.arriving.pop(self._transport, None)
            if self._timer is not None:
                self._timer.cancel()

        def _hand_over(self, challenge: ssl.SSLContext | None) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            transport, pending = self._transport, self._buffer
            self._buffer = b""
            if not self._secure or tls is None:
                self._state.arriving.pop(transport, None)
                transport.set_protocol(self._app)
                self._app.connection_made(transport)
                if pending:
                    self._app.data_received(pending)
                return
            app: asyncio.Protocol = self._app
            if challenge is not None:
                app = _CloseAfterHandshake()
            elif h2_app_class is not None:
                app = _ByAlpn(self, transport)
            protocol = _ssl_protocol_class(self._loop)(
                self._loop,
                app,
                challenge or tls.context,
                None,
                server_side=True,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
            )
            transport.set_protocol(protocol)
            protocol.connection_made(transport)
            while pending:
                buffer = protocol.get_buffer(len(pending))
                size = min(len(buffer), len(pending))
                buffer[:size] = pending[:size]
                protocol.buffer_updated(size)
                pending = pending[size:]

    return Router


class _ByAlpn(asyncio.Protocol):
    """A TLS connection's protocol for the length of its handshake: then HTTP/2 or HTTP/1.1, as ALPN chose."""

    def __init__(self, router: Any, raw: asyncio.BaseTransport) -> None:
        self.router = router
        self.raw = raw

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        router = self.router
        app = router._app
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
            app = router.h2_class(**router._kwargs)
            app.corral_proxy = getattr(router._app, "corral_proxy", None)
            if self.raw in router._state.arriving:
                router._state.arriving[self.raw] = app  # the drain waits for this one now
        transport.set_protocol(app)
        app.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        pass  # the handshake failed: the router forgets the connection


def _with_proxy_addresses(inner: type[asyncio.Protocol]) -> type[asyncio.Protocol]:
    """uvicorn's protocol reporting the addresses from the PROXY header as client and server."""

    class ProxiedProtocol(inner):  # type: ignore[valid-type,misc]
        corral_proxy: ProxyInfo | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            if self.corral_proxy is not None:
                self.client = self.corral_proxy.client
                if self.corral_proxy.server is not None:
                    self.server = self.corral_proxy.server

    return ProxiedProtocol
