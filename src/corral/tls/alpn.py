"""TLS-ALPN-01 (RFC 8737): the challenge certificate, built with cryptography (acme 5 dropped it)."""

from __future__ import annotations

import datetime as dt
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID, ObjectIdentifier

from corral.tls.localca import key_pem, new_key

ACME_TLS_1 = "acme-tls/1"
ID_PE_ACME_IDENTIFIER = ObjectIdentifier("1.3.6.1.5.5.7.1.31")


def challenge_certificate(name: str, key_authorization: str) -> bytes:
    """Key + self-signed certificate (PEM) for `name` carrying the critical acmeIdentifier extension:
    an ASN.1 OCTET STRING holding SHA-256 of the key authorization."""
    digest = hashlib.sha256(key_authorization.encode()).digest()
    extension_value = b"\x04\x20" + digest  # DER OCTET STRING, 32 bytes
    key = new_key()
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.UnrecognizedExtension(ID_PE_ACME_IDENTIFIER, extension_value), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key_pem(key) + cert.public_bytes(serialization.Encoding.PEM)
