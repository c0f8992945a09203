"""Serving HTTPS like a worker: local CA, hot reload of --certfile, redirects, HSTS, PROXY protocol,
forwarded headers, and the TLS-ALPN-01 router never showing a challenge certificate to a normal client."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from cryptography import x509

from corral.errors import CorralError
from corral.tls.alpn import ID_PE_ACME_IDENTIFIER, challenge_certificate
from corral.tls.service import CertificateService
from corral.tls.store import Store
from harness import options_from, wait_for
from tls_helpers import (
    http_get,
    https_get,
    listen,
    running_service,
    served_certificate,
    thread_worker,
    tls_connect,
)


def test_local_ca_verified_by_httpx(tmp_path: Path) -> None:
    sock = listen()
    port = sock.getsockname()[1]
    settings = options_from({"https": ["localhost"], "bind": [f"127.0.0.1:{port}"], "hsts": True})
    state = tmp_path / "state"
    service = CertificateService(settings, state, lambda: None)
    with running_service(service), thread_worker(settings, state, sock) as _:
        context = ssl.create_default_context(cafile=str(state / "ca/root.pem"))
        response = httpx.get(f"https://localhost:{port}/hello", verify=context, timeout=20)
    assert response.status_code == 200
    assert response.text == "127.0.0.1 https /hello"
    assert response.headers["strict-transport-security"] == "max-age=31536000"
    for key in (state / "ca/root.key", state / "certs/local/key.pem", state / "certs/current/local.pem"):
        assert key.stat().st_mode & 0o777 == 0o600


def test_redirect_and_http01_answers_on_the_plain_listener(tmp_path: Path) -> None:
    https_sock, http_sock = listen(), listen()
    port, http_port = https_sock.getsockname()[1], http_sock.getsockname()[1]
    settings = options_from({"https": ["localhost"], "bind": [f"127.0.0.1:{port}"]})
    state = tmp_path / "state"
    service = CertificateService(settings, state, lambda: None)
    with running_service(service), thread_worker(settings, state, https_sock, http_sock):
        response = httpx.get(f"http://127.0.0.1:{http_port}/a/b?x=1", headers={"host": "localhost"})
        assert response.status_code == 308
        assert response.headers["location"] == f"https://localhost:{port}/a/b?x=1"
        Store(state).http01_path("tok-123").write_bytes(b"tok-123.thumb")
        answer = httpx.get(f"http://127.0.0.1:{http_port}/.well-known/acme-challenge/tok-123")
        assert (answer.status_code, answer.content) == (200, b"tok-123.thumb")
        missing = httpx.get(f"http://127.0.0.1:{http_port}/.well-known/acme-challenge/nope")
        assert missing.status_code == 404


def _write_pair(cert: trustme.LeafCert, certfile: Path, keyfile: Path) -> None:
    tmp_cert, tmp_key = certfile.with_suffix(".new"), keyfile.with_suffix(".new")
    tmp_cert.write_bytes(b"".join(pem.bytes() for pem in cert.cert_chain_pems))
    tmp_key.write_bytes(cert.private_key_pem.bytes())
    tmp_key.replace(keyfile)
    tmp_cert.replace(certfile)


def test_certfile_change_is_picked_up_and_a_broken_one_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="corral.tls")
    ca = trustme.CA()
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    _write_pair(ca.issue_cert("api.example.com"), certfile, keyfile)
    sock = listen()
    port = sock.getsockname()[1]
    settings = options_from(
        {"https": ["api.example.com"], "bind": [f"127.0.0.1:{port}"], "certfile": str(certfile),
         "keyfile": str(keyfile)}
    )  # fmt: skip
    state = tmp_path / "state"
    workers: list[Any] = []
    service = CertificateService(settings, state, lambda: [w.reload() for w in workers])
    with running_service(service), thread_worker(settings, state, sock) as worker:
        workers.append(worker)
        first = served_certificate(port, "api.example.com")
        kept_open = tls_connect(port, "api.example.com")
        second_cert = ca.issue_cert("api.example.com")
        _write_pair(second_cert, certfile, keyfile)
        second = wait_for(
            lambda: (
                (c := served_certificate(port, "api.example.com")).serial_number != first.serial_number and c
            ),
            what="the replaced certificate to be served",
        )
        # the connection opened before the change still works
        kept_open.sendall(b"GET /still HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n")
        assert b"200 OK" in kept_open.recv(65536)
        kept_open.close()
        # a key that does not match: refused with one line, the second certificate keeps serving
        other = ca.issue_cert("api.example.com")
        certfile.write_bytes(other.cert_chain_pems[0].bytes())
        wait_for(lambda: "refused: private key does not match" in caplog.text, what="the refusal")
        assert served_certificate(port, "api.example.com").serial_number == second.serial_number
        # unreadable garbage: refused too
        certfile.write_bytes(b"not a certificate")
        wait_for(lambda: "refused: certificate is not readable" in caplog.text, what="the second refusal")
        assert served_certificate(port, "api.example.com").serial_number == second.serial_number


def test_bad_certfile_at_start_is_one_clear_error(tmp_path: Path) -> None:
    ca = trustme.CA()
    expired = ca.issue_cert("api.example.com", not_after=trustme.datetime.datetime(2001, 1, 1),
                           not_before=trustme.datetime.datetime(2000, 1, 1))  # fmt: skip
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    _write_pair(expired, certfile, keyfile)
    settings = options_from(
        {"https": ["api.example.com"], "certfile": str(certfile), "keyfile": str(keyfile)}
    )
    service = CertificateService(settings, tmp_path / "state", lambda: None)
    with pytest.raises(CorralError, match="certificate expired at 2001-01-01"):
        asyncio.run(service.start())


def test_challenge_certificate_only_for_acme_tls_1_clients(tmp_path: Path) -> None:
    sock = listen()
    port = sock.getsockname()[1]
    settings = options_from({"https": ["app.test"], "bind": [f"127.0.0.1:{port}"]})
    state = tmp_path / "state"
    service = CertificateService(settings, state, lambda: None)
    with running_service(service), thread_worker(settings, state, sock):
        Store(state).tls_alpn01_path("app.test").write_bytes(challenge_certificate("app.test", "tok.thumb"))
        with tls_connect(port, "app.test", alpn=["acme-tls/1"]) as acme:
            assert acme.selected_alpn_protocol() == "acme-tls/1"
            der = acme.getpeercert(binary_form=True)
        assert der is not None
        x509.load_der_x509_certificate(der).extensions.get_extension_for_oid(ID_PE_ACME_IDENTIFIER)
        for alpn in (["h2", "http/1.1"], None):
            normal = served_certificate(port, "app.test") if alpn is None else None
            if alpn is not None:
                with tls_connect(port, "app.test", alpn=alpn) as conn:
                    normal = x509.load_der_x509_certificate(conn.getpeercert(binary_form=True) or b"")
            assert normal is not None
            with pytest.raises(x509.ExtensionNotFound):
                normal.extensions.get_extension_for_oid(ID_PE_ACME_IDENTIFIER)
        # and a normal request while the challenge is pending is served by the app, verified
        response = https_get(port, "app.test", "/ok", cafile=state / "ca/root.pem")
        assert response.startswith(b"HTTP/1.1 200") and response.endswith(b"https /ok")


def test_proxy_protocol_and_forwarded_headers(tmp_path: Path) -> None:
    https_sock, http_sock = listen(), listen()
    port, http_port = https_sock.getsockname()[1], http_sock.getsockname()[1]
    settings = options_from(
        {"https": ["localhost"], "bind": [f"127.0.0.1:{port}"], "proxy_protocol": True,
         "forwarded_allow_ips": ["127.0.0.0/8"]}
    )  # fmt: skip
    state = tmp_path / "state"
    service = CertificateService(settings, state, lambda: None)
    with running_service(service), thread_worker(settings, state, https_sock, http_sock):
        v1 = b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 443\r\n"
        assert https_get(port, "localhost", "/p", prefix=v1).endswith(b"203.0.113.9 https /p")
        addresses = (
            bytes([198, 51, 100, 4, 127, 0, 0, 1]) + (5555).to_bytes(2, "big") + (443).to_bytes(2, "big")
        )
        v2 = b"\r\n\r\n\x00\r\nQUIT\n\x21\x11" + (12).to_bytes(2, "big") + addresses
        assert https_get(port, "localhost", "/q", prefix=v2).endswith(b"198.51.100.4 https /q")
        # the plain listener takes a header too (redirect answered)
        assert b"308" in http_get(http_port, "/r", prefix=v1).split(b"\r\n")[0]
        # no header: the connection is refused
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            https_get(port, "localhost", "/")
        # the proxy (127.0.0.1 after the PROXY header? no: 203.0.113.9 is not trusted) -> headers ignored
        local = b"PROXY TCP4 127.0.0.5 127.0.0.1 40000 443\r\n"
        forwarded = http_get(http_port, "/.well-known/acme-challenge/x", prefix=local)
        assert b"404" in forwarded.split(b"\r\n")[0]
    # forwarded headers without the PROXY protocol
    https_sock, http_sock = listen(), listen()
    port = https_sock.getsockname()[1]
    settings = options_from(
        {"https": ["localhost"], "bind": [f"127.0.0.1:{port}"], "forwarded_allow_ips": ["127.0.0.0/8"]}
    )
    service = CertificateService(settings, tmp_path / "state2", lambda: None)
    with running_service(service), thread_worker(settings, tmp_path / "state2", https_sock, http_sock):
        get = _https_with_headers(port)
        assert (
            get({"x-forwarded-for": "192.0.2.1, 127.0.0.3", "x-forwarded-proto": "http"})
            == "192.0.2.1 http /"
        )
        assert (
            get({"forwarded": 'for="[2001:db8::5]:4711";proto=https, for=127.0.0.2'}) == "2001:db8::5 https /"
        )
    https_sock, http_sock = listen(), listen()
    port = https_sock.getsockname()[1]
    untrusted = dataclasses.replace(settings, forwarded_allow_ips=["10.0.0.0/8"])
    shutil.rmtree(tmp_path / "state2")
    service = CertificateService(untrusted, tmp_path / "state2", lambda: None)
    with running_service(service), thread_worker(untrusted, tmp_path / "state2", https_sock, http_sock):
        assert _https_with_headers(port)({"x-forwarded-for": "192.0.2.1"}) == "127.0.0.1 https /"


def _https_with_headers(port: int) -> Any:
    def get(headers: dict[str, str]) -> str:
        return httpx.get(f"https://127.0.0.1:{port}/", headers=headers, verify=False, timeout=20).text

    return get
