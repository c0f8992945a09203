"""The pure and file-level pieces of corral.tls: renewal timing, validation, parsers, local CA, store."""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import ssl
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from corral.errors import ConfigError
from corral.tls.alpn import ID_PE_ACME_IDENTIFIER, challenge_certificate
from corral.tls.certs import BadCertificate, covers, load_material
from corral.tls.clienthello import parse_client_hello, record_length
from corral.tls.localca import LocalCA
from corral.tls.names import is_local_name
from corral.tls.plan import certificate_plans
from corral.tls.proxyprotocol import ProxyProtocolError, parse_proxy_header
from corral.tls.renewal import renewal_time
from corral.tls.store import Store
from harness import options_from

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


# renewal timing
def test_renewal_at_one_third_of_lifetime_remaining() -> None:
    not_after = T0 + dt.timedelta(days=90)
    assert renewal_time(T0, not_after, None, T0) == T0 + dt.timedelta(days=60)
    short = T0 + dt.timedelta(days=6)
    assert renewal_time(T0, short, None, T0) == T0 + dt.timedelta(days=4)


def test_renewal_never_in_the_past() -> None:
    late = T0 + dt.timedelta(days=80)
    assert renewal_time(T0, T0 + dt.timedelta(days=90), None, late) == late


def test_renewal_follows_an_earlier_ari_window() -> None:
    window = (T0 + dt.timedelta(days=10), T0 + dt.timedelta(days=12))
    assert renewal_time(T0, T0 + dt.timedelta(days=90), window, T0) == T0 + dt.timedelta(days=11)
    late_window = (T0 + dt.timedelta(days=70), T0 + dt.timedelta(days=72))
    assert renewal_time(T0, T0 + dt.timedelta(days=90), late_window, T0) == T0 + dt.timedelta(days=60)


def test_renewal_backoff_grows_and_is_capped() -> None:
    not_after = T0 + dt.timedelta(days=90)
    now = T0 + dt.timedelta(days=61)
    delays = [renewal_time(T0, not_after, None, now, failures) - now for failures in range(1, 12)]
    assert delays[0] == dt.timedelta(seconds=10)
    assert delays[1] == dt.timedelta(seconds=20)
    assert all(a <= b for a, b in itertools.pairwise(delays))
    assert delays[-1] == dt.timedelta(hours=1)


def test_renewal_backoff_scales_with_short_lifetimes() -> None:
    not_after = T0 + dt.timedelta(minutes=2)
    delay = renewal_time(T0, not_after, None, T0, failures=8) - T0
    assert delay == dt.timedelta(seconds=6)


# names and plans
def test_local_names() -> None:
    for name in ("localhost", "api.localhost", "127.0.0.1", "::1", "x.test", "db.internal", "myhost"):
        assert is_local_name(name), name
    for name in ("api.example.com", "example.org"):
        assert not is_local_name(name), name


def test_plans_split_public_and_local_names() -> None:
    plans = certificate_plans(options_from({"https": ["api.example.com", "localhost", "www.example.com"]}))
    assert [(p.label, p.names) for p in plans] == [
        ("acme", ("api.example.com", "www.example.com")),
        ("local", ("localhost", "127.0.0.1", "::1")),  # the local certificate also covers loopback
    ]
    with pytest.raises(ConfigError, match="--keyfile needs --certfile"):
        certificate_plans(options_from({"keyfile": "k.pem"}))


def test_wildcard_coverage() -> None:
    assert covers(["*.example.com"], "api.example.com")
    assert not covers(["*.example.com"], "a.b.example.com")
    assert not covers(["*.example.com"], "example.com")
    assert covers(["127.0.0.1"], "127.0.0.1")


# validation
@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def test_valid_material(ca: trustme.CA) -> None:
    cert = ca.issue_cert("api.example.com")
    material = load_material(
        cert.cert_chain_pems[0].bytes(), cert.private_key_pem.bytes(), names=["api.example.com"]
    )
    assert material.names == ["api.example.com"]


def test_refuses_key_mismatch(ca: trustme.CA) -> None:
    one, other = ca.issue_cert("a.example.com"), ca.issue_cert("a.example.com")
    with pytest.raises(BadCertificate, match="does not match"):
        load_material(one.cert_chain_pems[0].bytes(), other.private_key_pem.bytes())


def test_refuses_expired(ca: trustme.CA) -> None:
    old = ca.issue_cert("a.example.com", not_after=dt.datetime.now(dt.UTC) - dt.timedelta(days=1),
                        not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=10))  # fmt: skip
    with pytest.raises(BadCertificate, match="expired"):
        load_material(old.cert_chain_pems[0].bytes(), old.private_key_pem.bytes())


def test_refuses_garbage_and_uncovered_names(ca: trustme.CA) -> None:
    cert = ca.issue_cert("a.example.com")
    with pytest.raises(BadCertificate, match="not readable"):
        load_material(b"garbage", cert.private_key_pem.bytes())
    with pytest.raises(BadCertificate, match=r"does not cover b\.example\.com"):
        load_material(cert.cert_chain_pems[0].bytes(), cert.private_key_pem.bytes(), names=["b.example.com"])


# ClientHello and PROXY protocol parsers, fed with real bytes
def _client_hello(server_name: str, alpn: list[str]) -> bytes:
    context = ssl.create_default_context()
    context.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    sslobj = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        sslobj.do_handshake()
    return outgoing.read()


def test_client_hello_sni_and_alpn() -> None:
    data = _client_hello("api.example.com", ["acme-tls/1", "http/1.1"])
    assert record_length(data) == len(data)
    hello = parse_client_hello(data)
    assert hello.server_name == "api.example.com"
    assert hello.alpn == ("acme-tls/1", "http/1.1")


def test_proxy_v1_and_v2() -> None:
    v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\nrest"
    info, size = parse_proxy_header(v1) or (None, 0)
    assert info is not None and info.client == ("203.0.113.7", 51000) and v1[size:] == b"rest"
    assert parse_proxy_header(b"PROXY TCP4 203.0.") is None
    v2 = (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x21]) + (36).to_bytes(2, "big")
          + bytes.fromhex("20010db8000000000000000000000001") + bytes(16) + (443).to_bytes(2, "big")
          + (8443).to_bytes(2, "big"))  # fmt: skip
    info, size = parse_proxy_header(v2 + b"x") or (None, 0)
    assert info is not None and info.client == ("2001:db8::1", 443) and size == len(v2)
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(b"GET / HTTP/1.1\r\n")


# challenge certificate
def test_tls_alpn_challenge_certificate() -> None:
    pem = challenge_certificate("api.example.com", "token.thumb")
    cert = x509.load_pem_x509_certificate(pem[pem.index(b"-----BEGIN CERTIFICATE") :])
    extension = cert.extensions.get_extension_for_oid(ID_PE_ACME_IDENTIFIER)
    assert extension.critical
    assert len(extension.value.value) == 34  # DER OCTET STRING of a SHA-256


# local CA and store
def test_local_ca_leaf_verifies_and_keys_are_private(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    store.prepare()
    material = LocalCA(store).issue(["localhost", "127.0.0.1"])
    store.publish("local", material)
    context = ssl.create_default_context(cafile=str(tmp_path / "state/ca/root.pem"))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(store.current_path("local"))
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    client = context.wrap_bio(client_in, client_out, server_hostname="localhost")
    peer = server.wrap_bio(server_in, server_out, server_side=True)
    for _ in range(10):
        for side, out, other_in in ((client, client_out, server_in), (peer, server_out, client_in)):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
            other_in.write(out.read())
    assert client.getpeercert() is not None
    for path in (tmp_path / "state/ca/root.key", store.current_path("local")):
        assert path.stat().st_mode & 0o777 == 0o600
    key = serialization.load_pem_private_key((tmp_path / "state/ca/root.key").read_bytes(), None)
    assert key is not None


def test_lock_excludes_another_process(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.prepare()
    script = textwrap.dedent(
        f"""
        import fcntl, os
        fd = os.open({str(tmp_path / "locks/acme.lock")!r}, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            print("acquired")
        except BlockingIOError:
            print("busy")
        """
    )
    with store.lock("acme"):
        held = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    free = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert held.stdout.strip() == "busy"
    assert free.stdout.strip() == "acquired"


def test_plain_http_listener_defaults() -> None:
    from corral.tls.plan import http_binds

    assert http_binds(options_from({"https": ["api.example.com"]})) == ["0.0.0.0:80"]
    assert http_binds(options_from({"https": ["api.example.com"], "acme_challenges": ["tls-alpn-01"]})) == []
    assert http_binds(options_from({"https": ["localhost"]})) == []
    assert http_binds(options_from({"https": ["localhost"], "http_bind": ["127.0.0.1:8080"]})) == [
        "127.0.0.1:8080"
    ]
