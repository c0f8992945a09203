"""Certificates from a real ACME server (pebble): HTTP-01, TLS-ALPN-01, renewal, an unreachable server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from corral.tls.service import CertificateService
from harness import options_from, wait_for
from pebble import pebble_server
from tls_helpers import listen, running_service, served_certificate, thread_worker, tls_connect

DOMAIN = "api.corral-example.com"


def _settings(pebble: Any, https_port: int, http_port: int, challenges: list[str]) -> Any:
    return options_from(
        {
            "https": [DOMAIN],
            "bind": [f"127.0.0.1:{https_port}"],
            "http_bind": [f"127.0.0.1:{http_port}"],
            "acme_directory": pebble.directory_url,
            "acme_ca_bundle": str(pebble.listener_ca),
            "acme_challenges": challenges,
        }
    )


def _issued_by_pebble(port: int, root: Path) -> x509.Certificate | None:
    """The served certificate if it verifies against pebble's issuing root, else None."""
    try:
        with tls_connect(port, DOMAIN, cafile=root) as sock:
            der = sock.getpeercert(binary_form=True)
    except OSError:
        return None
    return x509.load_der_x509_certificate(der) if der else None


@pytest.mark.parametrize("challenge", ["http-01", "tls-alpn-01"])
def test_certificate_by_challenge(tmp_path: Path, challenge: str) -> None:
    https_sock, http_sock = listen(), listen()
    https_port, http_port = https_sock.getsockname()[1], http_sock.getsockname()[1]
    with pebble_server(tmp_path / "pebble", http_port, https_port) as pebble:  # default: 5 % bad nonces
        settings = _settings(pebble, https_port, http_port, [challenge])
        state = tmp_path / "state"
        workers: list[Any] = []
        service = CertificateService(settings, state, lambda: [w.reload() for w in workers])
        # start() publishes a local-CA stand-in: workers serve it while the ACME order runs
        with running_service(service), thread_worker(settings, state, https_sock, http_sock) as worker:
            workers.append(worker)
            stand_in = served_certificate(https_port, DOMAIN)
            cert = wait_for(lambda: _issued_by_pebble(https_port, pebble.issuing_root), 120, "pebble cert")
        assert cert.serial_number != stand_in.serial_number
        assert DOMAIN in cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.DNSName)
        log = pebble.log_text()
        assert challenge in log or "validat" in log.lower()
        assert (state / "certs/acme/key.pem").stat().st_mode & 0o777 == 0o600
        assert not list((state / "challenges/http-01").iterdir())
        assert not list((state / "challenges/tls-alpn-01").iterdir())
