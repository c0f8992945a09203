"""HTTPS through the real CLI: `corral run --https ...` against a real pebble ACME server, the local CA,
--certfile/--keyfile hot reload, the redirect, HSTS, the PROXY protocol and forwarded headers."""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from cryptography import x509

from harness import Corral, free_port, wait_for, write_app
from pebble import Pebble, pebble_server
from tls_helpers import http_get, https_get, served_certificate, tls_connect

DOMAIN = "api.corral-example.com"
ACME_DEADLINE = 150.0

ECHO = """
    import os

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        client = scope.get("client") or ("", 0)
        body = f"{client[0]} {scope['scheme']} {scope['path']} {os.getpid()}".encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
"""


@contextlib.contextmanager
def corral(tmp_path: Path, *args: str, port: int | None = None) -> Iterator[Corral]:
    write_app(tmp_path, ECHO, "echo.py")
    server = Corral(tmp_path, "echo:app", "-w", "2", *args, port=port)
    try:
        yield server
    finally:
        server.stop()


def acme_args(pebble: Pebble, state: Path, challenge: str) -> list[str]:
    return [
        "--https", DOMAIN, "--state-dir", str(state), "--acme-directory", pebble.directory_url,
        "--acme-ca-bundle", str(pebble.listener_ca), "--acme-challenges", challenge,
    ]  # fmt: skip


def issued_by(port: int, root: Path, name: str = DOMAIN) -> x509.Certificate | None:
    """The certificate served for `name` if it verifies against `root`, else None."""
    try:
        with tls_connect(port, name, cafile=root) as sock:
            der = sock.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None
    return x509.load_der_x509_certificate(der) if der else None


def dns_names(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(name) for name in san.get_values_for_type(x509.DNSName)]


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.mark.parametrize("challenge", ["http-01", "tls-alpn-01"])
def test_certificate_from_pebble(tmp_path: Path, challenge: str) -> None:
    """pebble validates against Corral's own listeners: --http-bind for HTTP-01, --bind for TLS-ALPN-01
    (then no plain listener at all). pebble's default 5 % bad nonces stay on."""
    https_port, http_port = free_port(), free_port()
    state = tmp_path / "state"
    with pebble_server(tmp_path / "pebble", http_port, https_port) as pebble:
        plain = ["--http-bind", f"127.0.0.1:{http_port}"] if challenge == "http-01" else []
        with corral(tmp_path, *acme_args(pebble, state, challenge), *plain, port=https_port) as server:
            pids = server.wait_ready(2)
            cert = wait_for(lambda: issued_by(https_port, pebble.issuing_root), ACME_DEADLINE,
                            f"a certificate from pebble by {challenge}")  # fmt: skip
            assert dns_names(cert) == [DOMAIN]
            response = https_get(https_port, DOMAIN, "/hello", cafile=pebble.issuing_root)
            assert response.startswith(b"HTTP/1.1 200")
            assert b"127.0.0.1 https /hello" in response
            status = server.status()
            assert server.ready_pids() == pids
            (entry,) = status["certificates"]
            assert entry["source"] == "acme" and entry["names"] == [DOMAIN]
            assert entry["temporary"] is False and entry["serial"] == format(cert.serial_number, "x")
            if challenge == "tls-alpn-01":
                with pytest.raises(httpx.ConnectError):
                    httpx.get(f"http://127.0.0.1:{http_port}/", timeout=5)
    assert "obtained" in server.log
    assert ("Attempting to validate w/ HTTP" in pebble.log_text()) == (challenge == "http-01")
    assert "set VALID by completed challenge" in pebble.log_text()
    assert "Configured to reject 5% of good nonces" in pebble.log_text()
    for key in (state / "certs/acme/key.pem", state / "certs/current/acme.pem", *state.glob("acme/*/account.key")):
        assert mode(key) == 0o600, key
    assert len(list(state.glob("acme/*/account.key"))) == 1
    assert mode(state) == 0o700
    assert not list((state / "challenges/http-01").iterdir())
    assert not list((state / "challenges/tls-alpn-01").iterdir())


def test_renewal_without_restart_and_unreachable_ca(tmp_path: Path) -> None:
    """A 30 s certificate is renewed when a third of its life remains; a new connection sees the new one
    and the workers are the same processes. Then pebble stops: retries are logged and the last
    certificate keeps serving."""
    https_port, http_port = free_port(), free_port()
    state = tmp_path / "state"
    with contextlib.ExitStack() as pebble_running:
        pebble = pebble_running.enter_context(
            pebble_server(tmp_path / "pebble", http_port, https_port, validity_seconds=30)
        )
        with corral(tmp_path, *acme_args(pebble, state, "http-01"), "--http-bind", f"127.0.0.1:{http_port}",
                    port=https_port) as server:  # fmt: skip
            pids = server.wait_ready(2)
            first = wait_for(lambda: issued_by(https_port, pebble.issuing_root), ACME_DEADLINE, "first cert")
            lifetime = first.not_valid_after_utc - first.not_valid_before_utc
            assert lifetime <= dt.timedelta(seconds=31)

            def renewed() -> x509.Certificate | None:
                cert = issued_by(https_port, pebble.issuing_root)
                return cert if cert is not None and cert.serial_number != first.serial_number else None

            second = wait_for(renewed, ACME_DEADLINE, "the renewed certificate on a new connection")
            assert second.not_valid_after_utc > first.not_valid_after_utc
            assert server.ready_pids() == pids
            (entry,) = server.status()["certificates"]
            assert entry["failures"] == 0

            pebble_running.close()  # pebble is gone when the next renewal is due

            def failures() -> dict[str, Any] | None:
                (row,) = server.status()["certificates"]
                return row if row["failures"] >= 2 else None

            row = wait_for(failures, ACME_DEADLINE, "two failed renewal attempts")
            assert row["last_error"]
            assert row["serial"] == format(second.serial_number, "x")
            assert server.log.count("not renewed") >= 2
            assert "retrying at" in server.log and "the current certificate keeps serving" in server.log
            assert served_certificate(https_port, DOMAIN).serial_number == second.serial_number
            assert server.ready_pids() == pids


def test_local_ca_redirect_and_hsts(tmp_path: Path) -> None:
    http_port = free_port()
    state = tmp_path / "state"
    with corral(tmp_path, "--https", "localhost", "--state-dir", str(state), "--hsts",
                "--http-bind", f"127.0.0.1:{http_port}") as server:  # fmt: skip
        server.wait_ready(2)
        root = state / "ca/root.pem"
        context = ssl.create_default_context(cafile=str(root))
        response = httpx.get(f"https://localhost:{server.port}/hello?x=1", verify=context, timeout=20)
        assert response.status_code == 200
        assert response.text.startswith("127.0.0.1 https /hello ")
        assert response.headers["strict-transport-security"] == "max-age=31536000"
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"https://localhost:{server.port}/", timeout=20)  # the system store does not trust it

        redirect = httpx.get(f"http://127.0.0.1:{http_port}/a/b?x=1&y=2", headers={"host": "localhost"})
        assert redirect.status_code == 308
        assert redirect.headers["location"] == f"https://localhost:{server.port}/a/b?x=1&y=2"
        assert "strict-transport-security" not in redirect.headers
        followed = httpx.get(f"http://localhost:{http_port}/next", verify=context, follow_redirects=True,
                             timeout=20)  # fmt: skip
        assert followed.status_code == 200 and followed.text.startswith("127.0.0.1 https /next ")

        if shutil.which("curl"):
            curl = subprocess.run(
                ["curl", "--silent", "--show-error", "--include", "--cacert", str(root), "--resolve",
                 f"localhost:{server.port}:127.0.0.1", f"https://localhost:{server.port}/curl"],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert curl.returncode == 0, curl.stderr
            assert "strict-transport-security: max-age=31536000" in curl.stdout.lower()
            assert "127.0.0.1 https /curl " in curl.stdout

        (entry,) = server.status()["certificates"]
        assert entry["source"] == "local" and entry["names"] == ["localhost", "127.0.0.1", "::1"]
    for key in (state / "ca/root.key", state / "certs/local/key.pem", state / "certs/current/local.pem"):
        assert mode(key) == 0o600, key
    assert mode(state) == 0o700


def _write_pair(cert: trustme.LeafCert, certfile: Path, keyfile: Path) -> None:
    """Replace both files the way a certificate manager does: write aside, rename over."""
    for target, data in (
        (keyfile, cert.private_key_pem.bytes()),
        (certfile, b"".join(pem.bytes() for pem in cert.cert_chain_pems)),
    ):
        aside = target.with_suffix(".tmp")
        aside.write_bytes(data)
        aside.replace(target)


def logged_again(server: Corral, text: str, before: int) -> Callable[[], bool]:
    return lambda: server.log.count(text) > before


def test_certfile_replaced_on_disk(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    name = "api.example.com"
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    _write_pair(ca.issue_cert(name), certfile, keyfile)
    with corral(tmp_path, "--certfile", str(certfile), "--keyfile", str(keyfile),
                "--state-dir", str(tmp_path / "state")) as server:  # fmt: skip
        pids = server.wait_ready(2)
        first = issued_by(server.port, ca_file, name)
        assert first is not None
        # --certfile without --https: the names come from the certificate, never an empty "certificate for "
        assert f"certificate for {name} ({certfile}) valid until " in server.log, server.log
        assert server.status()["certificates"][0]["names"] == [name]
        kept_open = tls_connect(server.port, name, cafile=ca_file)

        _write_pair(ca.issue_cert(name), certfile, keyfile)

        def replaced() -> x509.Certificate | None:
            cert = issued_by(server.port, ca_file, name)
            return cert if cert is not None and cert.serial_number != first.serial_number else None

        second = wait_for(replaced, what="the replaced certificate on a new connection")
        assert server.ready_pids() == pids
        assert "certificate reloaded from" in server.log
        # the connection opened before the change is untouched
        kept_open.sendall(f"GET /still HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        assert kept_open.recv(65536).startswith(b"HTTP/1.1 200")
        kept_open.close()

        expired = ca.issue_cert(name, not_before=dt.datetime(2000, 1, 1), not_after=dt.datetime(2001, 1, 1))
        other_key = ca.issue_cert(name).cert_chain_pems[0].bytes()
        broken: list[tuple[str, Any]] = [
            ("certificate is not readable", lambda: certfile.write_bytes(b"not a certificate\n")),
            ("private key does not match", lambda: certfile.write_bytes(other_key)),
            ("certificate expired at 2001-01-01", lambda: _write_pair(expired, certfile, keyfile)),
        ]  # fmt: skip
        for reason, replace in broken:
            before = server.log.count(reason)
            replace()
            wait_for(logged_again(server, reason, before), what=f"the refusal ({reason})")
            assert f"new certificate in {certfile} refused: {reason}" in server.log
            assert issued_by(server.port, ca_file, name) is not None
            assert served_certificate(server.port, name).serial_number == second.serial_number
        (entry,) = server.status()["certificates"]
        assert entry["source"] == "files" and "expired" in entry["last_error"]
        assert server.ready_pids() == pids
        assert server.process.poll() is None


def _v2(client: bytes, server: bytes, ports: tuple[int, int], family: int) -> bytes:
    """A PROXY v2 PROXY/TCP header; family 0x11 (IPv4) or 0x21 (IPv6)."""
    body = client + server + ports[0].to_bytes(2, "big") + ports[1].to_bytes(2, "big")
    return b"\r\n\r\n\x00\r\nQUIT\n\x21" + bytes([family]) + len(body).to_bytes(2, "big") + body


def test_proxy_protocol(tmp_path: Path) -> None:
    http_port = free_port()
    with corral(tmp_path, "--https", "localhost", "--state-dir", str(tmp_path / "state"), "--proxy-protocol",
                "--http-bind", f"127.0.0.1:{http_port}") as server:  # fmt: skip
        server.wait_ready(2)
        port, root = server.port, tmp_path / "state/ca/root.pem"
        v1 = b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 443\r\n"
        assert b"\r\n\r\n203.0.113.9 https /v1 " in https_get(port, "localhost", "/v1", root, prefix=v1)
        v1_ipv6 = b"PROXY TCP6 2001:db8::7 ::1 40000 443\r\n"
        assert b"\r\n\r\n2001:db8::7 https /v1-6 " in https_get(port, "localhost", "/v1-6", root, prefix=v1_ipv6)
        v2 = _v2(bytes([198, 51, 100, 4]), bytes([127, 0, 0, 1]), (5555, 443), 0x11)
        assert b"\r\n\r\n198.51.100.4 https /v2 " in https_get(port, "localhost", "/v2", root, prefix=v2)
        v2_ipv6 = _v2(bytes.fromhex("20010db8" + "0" * 23 + "9"), bytes(15) + b"\x01", (5555, 443), 0x21)
        assert b"\r\n\r\n2001:db8::9 https /v2-6 " in https_get(port, "localhost", "/v2-6", root, prefix=v2_ipv6)
        # the plain listener expects the header too
        assert http_get(http_port, "/r", prefix=v1).startswith(b"HTTP/1.1 308")
        # without a header (or with garbage) the connection is refused, and the workers keep serving
        with pytest.raises((ssl.SSLError, OSError)):
            https_get(port, "localhost", "/", root)
        assert http_get(http_port, "/r", prefix=b"GARBAGE\r\n") == b""
        assert b"203.0.113.9 https /again " in https_get(port, "localhost", "/again", root, prefix=v1)


def _forwarded_get(port: int, root: Path, headers: dict[str, str]) -> str:
    context = ssl.create_default_context(cafile=str(root))
    return httpx.get(f"https://localhost:{port}/f", headers=headers, verify=context, timeout=20).text


def test_forwarded_headers_only_from_trusted_networks(tmp_path: Path) -> None:
    trusted_dir, untrusted_dir = tmp_path / "trusted", tmp_path / "untrusted"
    trusted_dir.mkdir()
    untrusted_dir.mkdir()
    with (
        corral(trusted_dir, "--https", "localhost", "--state-dir", str(trusted_dir / "state"),
               "--forwarded-allow-ips", "127.0.0.0/8") as trusted,
        corral(untrusted_dir, "--https", "localhost", "--state-dir", str(untrusted_dir / "state"),
               "--forwarded-allow-ips", "10.0.0.0/8", "--forwarded-allow-ips", "192.168.0.0/16") as untrusted,
    ):  # fmt: skip
        trusted.wait_ready(2)
        untrusted.wait_ready(2)
        get = _forwarded_get
        root_t, root_u = trusted_dir / "state/ca/root.pem", untrusted_dir / "state/ca/root.pem"
        xff = {"x-forwarded-for": "192.0.2.1", "x-forwarded-proto": "http"}
        assert get(trusted.port, root_t, xff).startswith("192.0.2.1 http /f ")
        # proxies append: the client is the rightmost address that is not a trusted proxy
        chain = {"x-forwarded-for": "198.51.100.1, 192.0.2.1, 127.0.0.9"}
        assert get(trusted.port, root_t, chain).startswith("192.0.2.1 https /f ")
        forwarded = {"forwarded": 'for="[2001:db8::5]:4711";proto=https'}
        assert get(trusted.port, root_t, forwarded).startswith("2001:db8::5 https /f ")
        # the connection comes from 127.0.0.1, which is not in the trusted networks: headers ignored
        assert get(untrusted.port, root_u, xff).startswith("127.0.0.1 https /f ")
        assert get(untrusted.port, root_u, forwarded).startswith("127.0.0.1 https /f ")
