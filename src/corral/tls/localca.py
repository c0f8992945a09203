"""A local certificate authority for names no public CA certifies (localhost, IPs, *.test, *.internal).

The root lives ten years in STATE/ca; leaves live a week and are renewed like any other certificate.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from corral.tls.certs import BadCertificate, Material, load_material
from corral.tls.names import is_ip
from corral.tls.store import Store

ROOT_LIFETIME = dt.timedelta(days=3650)
LEAF_LIFETIME = dt.timedelta(days=7)
BACKDATE = dt.timedelta(minutes=5)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def subject_alt_names(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        if is_ip(name):
            entries.append(x509.IPAddress(ipaddress.ip_address(name.strip("[]"))))
        else:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


class LocalCA:
    """Creates the root on first use and signs short-lived leaves with it."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @property
    def root_path(self) -> Path:
        return self.store.root / "ca" / "root.pem"

    @property
    def key_path(self) -> Path:
        return self.store.root / "ca" / "root.key"

    def root(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """The root certificate and key, created if missing."""
        if self.root_path.exists() and self.key_path.exists():
            cert = x509.load_pem_x509_certificate(self.root_path.read_bytes())
            key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise BadCertificate(f"{self.key_path}: not an EC key")
            return cert, key
        key = new_key()
        now = dt.datetime.now(dt.UTC)
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Corral local CA"),
                x509.NameAttribute(
                    NameOID.COMMON_NAME, f"Corral local CA {socket.gethostname()} {now:%Y-%m-%d}"
                ),
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + ROOT_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        self.store.write(self.key_path, key_pem(key), private=True)
        self.store.write(self.root_path, cert.public_bytes(serialization.Encoding.PEM))
        return cert, key

    def issue(self, names: list[str], lifetime: dt.timedelta = LEAF_LIFETIME) -> Material:
        """A new leaf for `names`, signed by the root (chain: leaf only; clients trust the root)."""
        root, root_key = self.root()
        key = new_key()
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(root.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(min(now + lifetime, root.not_valid_after_utc))
            .add_extension(subject_alt_names(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False
            )
            .sign(root_key, hashes.SHA256())
        )
        return load_material(cert.public_bytes(serialization.Encoding.PEM), key_pem(key), names=names)
