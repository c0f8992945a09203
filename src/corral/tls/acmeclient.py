"""An ACME (RFC 8555) client on top of the `acme` package: account, order, HTTP-01 / TLS-ALPN-01, ARI.

Blocking (the `acme` package uses requests): the manager runs it in a thread.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from pathlib import Path
from typing import Any

from acme import challenges, client, errors, messages
from acme.crypto_util import make_csr
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from josepy import b64, jwa, jwk

from corral.tls.alpn import challenge_certificate
from corral.tls.certs import Material, load_material
from corral.tls.localca import key_pem, new_key
from corral.tls.names import file_label
from corral.tls.store import Store

logger = logging.getLogger("corral.tls")

USER_AGENT = "corral"
ORDER_TIMEOUT = dt.timedelta(seconds=120)
NONCE_RETRIES = 10


class AcmeError(Exception):
    """An order failed; the message is one line for the log."""


@challenges.ChallengeResponse.register
class TLSALPN01Response(challenges.ChallengeResponse):
    """The (empty) answer to a tls-alpn-01 challenge; acme 5 no longer ships it."""

    typ = "tls-alpn-01"

    def __bool__(self) -> bool:
        # without fields the object is falsy, and the acme client then sends a POST-as-GET instead of {}
        return True


class _Network(client.ClientNetwork):
    """ClientNetwork retrying badNonce more than once (servers may reject any nonce, pebble 5 %)."""

    def post(self, *args: Any, **kwargs: Any) -> Any:
        for _ in range(NONCE_RETRIES - 1):
            try:
                return self._post_once(*args, **kwargs)
            except messages.Error as error:
                if error.code != "badNonce":
                    raise
        return self._post_once(*args, **kwargs)


def account_dir(store: Store, directory_url: str) -> Path:
    """One account per ACME server (by directory URL)."""
    digest = hashlib.sha256(directory_url.encode()).hexdigest()[:16]
    return store.root / "acme" / digest


class AcmeIssuer:
    """Orders certificates from one ACME server; challenge answers go into the store for the workers."""

    def __init__(
        self,
        store: Store,
        directory_url: str,
        email: str | None = None,
        ca_bundle: str | None = None,
        challenge_types: list[str] | None = None,
    ) -> None:
        self.store = store
        self.directory_url = directory_url
        self.email = email
        self.verify: str | bool = ca_bundle or True
        self.challenge_types = challenge_types or ["http-01", "tls-alpn-01"]
        self._client: client.ClientV2 | None = None
        self._key: jwk.JWKEC | None = None

    def _account_key(self) -> jwk.JWKEC:
        path = account_dir(self.store, self.directory_url) / "account.key"
        if path.exists():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise AcmeError(f"{path}: not an EC key")
        else:
            key = new_key()
            self.store.write(path, key_pem(key), private=True)
        return jwk.JWKEC(key=key)

    def connect(self) -> client.ClientV2:
        """The client with a registered account (created, or found again by its key)."""
        if self._client is not None:
            return self._client
        self._key = self._account_key()
        net = _Network(
            self._key,
            alg=jwa.ES256,
            verify_ssl=self.verify,  # type: ignore[arg-type]  # requests takes a CA bundle path too
            user_agent=USER_AGENT,
        )
        directory = messages.Directory.from_json(net.get(self.directory_url).json())
        acme = client.ClientV2(directory, net)
        registration = messages.NewRegistration.from_data(email=self.email, terms_of_service_agreed=True)
        try:
            acme.new_account(registration)
        except errors.ConflictError as exc:
            net.account = messages.RegistrationResource(uri=exc.location, body=messages.Registration())
            acme.query_registration(net.account)
        self._client = acme
        return acme

    def issue(self, names: list[str]) -> Material:
        """Order a certificate for `names`, answer its challenges, return the validated material."""
        acme = self.connect()
        assert self._key is not None
        key = key_pem(new_key())
        order = acme.new_order(make_csr(key, names))
        published: list[Path] = []
        try:
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue
                published.append(self._answer(acme, authz))
            deadline = dt.datetime.now() + ORDER_TIMEOUT
            try:
                order = acme.poll_and_finalize(order, deadline=deadline)
            except errors.ValidationError as exc:
                raise AcmeError(f"validation failed: {_validation_errors(exc)}") from exc
            except errors.TimeoutError as exc:
                raise AcmeError("the ACME server did not validate or issue in time") from exc
        finally:
            for path in published:
                self.store.remove(path)
        return load_material(order.fullchain_pem.encode(), key, names=names)

    def _answer(self, acme: client.ClientV2, authz: messages.AuthorizationResource) -> Path:
        """Publish the answer to the preferred allowed challenge and tell the server to validate."""
        assert self._key is not None
        name = authz.body.identifier.value
        offered = {_challenge_type(challb): challb for challb in authz.body.challenges}
        for kind in self.challenge_types:
            challb = offered.get(kind)
            if challb is None:
                continue
            if kind == "http-01":
                response, validation = challb.response_and_validation(self._key)
                path = self.store.http01_path(challb.chall.encode("token"))
                self.store.write(path, validation.encode())
            else:
                token = challb.chall.jobj["token"]
                thumbprint = b64.b64encode(self._key.thumbprint(hash_function=hashes.SHA256)).decode()
                path = self.store.tls_alpn01_path(file_label(name))
                self.store.write(path, challenge_certificate(name, f"{token}.{thumbprint}"), private=True)
                response = TLSALPN01Response()
            acme.answer_challenge(challb, response)
            return path
        raise AcmeError(f"{name}: the server offers none of {', '.join(self.challenge_types)}")

    def suggested_renewal(self, material: Material) -> dt.datetime | None:
        """The CA's suggested renewal time (ACME Renewal Information), None when not offered."""
        acme = self.connect()
        try:
            when, _ = acme.renewal_time(material.chain_pem)
        except errors.ARIError as exc:
            logger.warning("renewal information unavailable: %s", exc)
            return None
        if when is None:
            return None
        result: dt.datetime = when if when.tzinfo else when.replace(tzinfo=dt.UTC)
        return result


def _challenge_type(challb: messages.ChallengeBody) -> str:
    """The type, also for challenges the `acme` package no longer knows (tls-alpn-01)."""
    if isinstance(challb.chall, challenges.UnrecognizedChallenge):
        return str(challb.chall.jobj.get("type"))
    return str(challb.chall.typ)


def _validation_errors(exc: errors.ValidationError) -> str:
    details: list[str] = []
    for authz in exc.failed_authzrs:
        for challb in authz.body.challenges:
            if challb.error is not None:
                name = authz.body.identifier.value
                details.append(f"{name} {_challenge_type(challb)}: {challb.error.detail}")
    return "; ".join(details) or "unknown reason"
