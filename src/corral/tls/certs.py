"""Certificate material: parse and validate a chain and its key before anything serves it."""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa


class BadCertificate(ValueError):
    """Material that must not be served; the message says why in one line."""


@dataclass(frozen=True)
class Material:
    """A validated certificate chain (leaf first) with its private key, both PEM."""

    chain_pem: bytes
    key_pem: bytes
    leaf: x509.Certificate

    @property
    def not_before(self) -> dt.datetime:
        return self.leaf.not_valid_before_utc

    @property
    def not_after(self) -> dt.datetime:
        return self.leaf.not_valid_after_utc

    @property
    def names(self) -> list[str]:
        return certificate_names(self.leaf)

    @property
    def serial(self) -> str:
        return format(self.leaf.serial_number, "x")

    def combined_pem(self) -> bytes:
        """Key then chain in one file: what `SSLContext.load_cert_chain(path)` reads."""
        return self.key_pem.rstrip(b"\n") + b"\n" + self.chain_pem


def certificate_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names: list[str] = [str(v).lower() for v in san.get_values_for_type(x509.DNSName)]
    names += [str(v) for v in san.get_values_for_type(x509.IPAddress)]
    return names


def covers(cert_names: list[str], name: str) -> bool:
    """Whether a certificate naming `cert_names` is valid for host `name` (one-label wildcards)."""
    name = name.lower()
    try:
        ip = str(ipaddress.ip_address(name))
    except ValueError:
        ip = None
    for candidate in cert_names:
        if ip is not None:
            if candidate == ip:
                return True
            continue
        if candidate == name:
            return True
        if candidate.startswith("*.") and "." in name and name.split(".", 1)[1] == candidate[2:]:
            return True
    return False


def load_material(
    chain_pem: bytes, key_pem: bytes, now: dt.datetime | None = None, names: list[str] | None = None
) -> Material:
    """Parse and check: readable PEM, key matches the leaf, currently valid, covers `names`."""
    now = now or dt.datetime.now(dt.UTC)
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
    except ValueError as exc:
        raise BadCertificate(f"certificate is not readable PEM ({exc})") from exc
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise BadCertificate(f"private key is not a readable unencrypted PEM key ({exc})") from exc
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise BadCertificate(f"unsupported private key type {type(key).__name__}")
    leaf = chain[0]
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, public) != leaf.public_key().public_bytes(
        serialization.Encoding.DER, public
    ):
        raise BadCertificate("private key does not match the certificate")
    if now < leaf.not_valid_before_utc:
        raise BadCertificate(
            f"certificate is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC"
        )
    if now >= leaf.not_valid_after_utc:
        raise BadCertificate(f"certificate expired at {leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")
    cert_names = certificate_names(leaf)
    missing = [name for name in names or [] if not covers(cert_names, name)]
    if missing:
        raise BadCertificate(f"certificate does not cover {', '.join(missing)}")
    clean_chain = b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in chain)
    return Material(chain_pem=clean_chain, key_pem=key_pem, leaf=leaf)


_PRIVATE_KEY = re.compile(rb"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.*?-----END \1PRIVATE KEY-----", re.DOTALL)


def read_material(certfile: str, keyfile: str | None, names: list[str] | None = None) -> Material:
    """Read files (key may live in the certificate file) and validate them."""
    try:
        with open(certfile, "rb") as file:
            chain_pem = file.read()
        if keyfile:
            with open(keyfile, "rb") as file:
                key_pem = file.read()
        else:
            found = _PRIVATE_KEY.search(chain_pem)
            key_pem = found.group(0) if found else b""
    except OSError as exc:
        raise BadCertificate(f"cannot read {exc.filename}: {exc.strerror}") from exc
    return load_material(chain_pem, key_pem, names=names)
