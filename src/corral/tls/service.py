"""The manager's certificate service: obtains, renews and watches certificates, publishes validated copies
for the workers and calls `on_change` (the manager then signals every worker to reload).

Runs in the manager's event loop; blocking work (ACME over HTTPS, key generation, file reads) runs in a
thread. Nothing reaches the workers before `load_material` accepted it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.errors import CorralError
from corral.manager.events import EventLog
from corral.options import Options
from corral.tls.acmeclient import AcmeIssuer
from corral.tls.certs import BadCertificate, Material, read_material
from corral.tls.localca import LocalCA
from corral.tls.plan import CertificatePlan, acme_directory, certificate_plans, describe_choice
from corral.tls.renewal import renewal_time, retry_delay
from corral.tls.store import Store

logger = logging.getLogger("corral.tls")

FILE_POLL = 1.0
MAX_SLEEP = 60.0
STAND_IN_LIFETIME = dt.timedelta(days=90)  # paces retries while no ACME certificate exists yet
ZERO = dt.timedelta(0)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class CertificateState:
    """What the service knows about one certificate (also what `status()` reports)."""

    plan: CertificatePlan
    material: Material | None = None
    temporary: bool = False  # a local-CA stand-in served until the ACME certificate arrives
    failures: int = 0
    next_at: dt.datetime = field(default_factory=_now)
    ari: dt.datetime | None = None
    last_error: str | None = None
    file_signature: tuple[Any, ...] | None = None

    @property
    def names(self) -> list[str]:
        """The names it is for: the plan's (`--https`), else, for `--certfile` alone, those the certificate holds."""
        if self.plan.names or self.material is None:
            return list(self.plan.names)
        return self.material.names


class CertificateService:
    """`start()` before the workers start (they need a certificate), then `run()` as a background task."""

    def __init__(
        self,
        settings: Options,
        state_dir: Path,
        on_change: Callable[[], None],
        owner: tuple[int, int] | None = None,
    ) -> None:
        self.settings = settings
        self.store = Store(state_dir, owner)
        self.on_change = on_change
        self.events: EventLog | None = None  # the supervisor's, once it exists: renewals are recorded there
        self.states = [CertificateState(plan) for plan in certificate_plans(settings)]
        self.local_ca = LocalCA(self.store)
        self.issuer = AcmeIssuer(
            self.store,
            acme_directory(settings),
            email=settings.acme_email,
            ca_bundle=settings.acme_ca_bundle,
            challenge_types=list(settings.acme_challenges),
        )

    async def start(self) -> None:
        """Prepare the state directory and publish a certificate for every plan, so workers can start.

        A bad `--certfile` stops the start with one clear line (CorralError)."""
        for line in describe_choice(self.settings):
            logger.info("%s", line)
        await asyncio.to_thread(self.store.prepare)
        for state in self.states:
            label = state.plan.label
            material: Material | None
            if label == "files":
                material = await asyncio.to_thread(self._read_files, state)
            elif label == "local":
                material = await asyncio.to_thread(self.store.load_issued, label, list(state.plan.names))
                if material is None:
                    material = await asyncio.to_thread(self._issue_local, state)
            else:
                material = await asyncio.to_thread(self.store.load_issued, label, list(state.plan.names))
                if material is None:
                    # HTTP-01 needs the workers up before the first certificate exists: serve a local-CA
                    # stand-in meanwhile and order right away.
                    material = await asyncio.to_thread(self.local_ca.issue, list(state.plan.names))
                    state.temporary = True
            state.material = material
            await asyncio.to_thread(self.store.publish, label, material)
            self._schedule(state)
            if not state.temporary:
                source = f" ({self.settings.certfile})" if label == "files" else ""
                logger.info("certificate for %s%s valid until %s", ", ".join(state.names) or "no name", source,
                            _when(material))

    async def run(self) -> None:
        """Forever: poll --certfile/--keyfile, renew local and ACME certificates when due."""
        while True:
            now = _now()
            changed = False
            for state in self.states:
                if state.plan.label == "files":
                    changed |= await self._poll_files(state)
                elif now >= state.next_at:
                    changed |= await self._renew(state)
            if changed:
                self.on_change()
            await asyncio.sleep(self._sleep_seconds())

    def status(self) -> list[dict[str, Any]]:
        """One entry per certificate, for `corral status`."""
        rows = []
        for state in self.states:
            material = state.material
            rows.append(
                {
                    "names": state.names,
                    "source": state.plan.label,
                    "temporary": state.temporary,
                    "not_after": material.not_after.isoformat() if material else None,
                    "serial": material.serial if material else None,
                    "next_renewal": None if state.plan.label == "files" else state.next_at.isoformat(),
                    "failures": state.failures,
                    "last_error": state.last_error,
                }
            )
        return rows

    def _sleep_seconds(self) -> float:
        if any(state.plan.label == "files" for state in self.states):
            return FILE_POLL
        earliest = min((state.next_at for state in self.states), default=_now())
        return min(max((earliest - _now()).total_seconds(), 0.05), MAX_SLEEP)

    def _schedule(self, state: CertificateState) -> None:
        material = state.material
        if material is None or state.temporary:
            state.next_at = _now() + (
                retry_delay(state.failures, STAND_IN_LIFETIME) if state.failures else ZERO
            )
            return
        ari = (state.ari, state.ari) if state.ari else None
        state.next_at = renewal_time(material.not_before, material.not_after, ari, _now(), state.failures)

    # --certfile / --keyfile
    def _signature(self) -> tuple[Any, ...]:
        parts: list[Any] = []
        for path in (self.settings.certfile, self.settings.keyfile):
            if path is None:
                continue
            try:
                info = os.stat(path)
                parts.append((info.st_ino, info.st_size, info.st_mtime_ns))
            except OSError:
                parts.append(None)
        return tuple(parts)

    def _read_files(self, state: CertificateState) -> Material:
        state.file_signature = self._signature()
        assert self.settings.certfile is not None
        try:
            return read_material(self.settings.certfile, self.settings.keyfile, list(state.plan.names))
        except BadCertificate as exc:
            raise CorralError(f"--certfile {self.settings.certfile}: {exc}") from exc

    async def _poll_files(self, state: CertificateState) -> bool:
        signature = await asyncio.to_thread(self._signature)
        if signature == state.file_signature:
            return False
        state.file_signature = signature
        assert self.settings.certfile is not None
        try:
            material = await asyncio.to_thread(
                read_material, self.settings.certfile, self.settings.keyfile, list(state.plan.names)
            )
        except BadCertificate as exc:
            state.last_error = str(exc)
            if self.events is not None:
                self.events.record("certificate", f"new certificate in {self.settings.certfile} refused: {exc}",
                                   names=list(state.plan.names), outcome="refused")
            logger.error(
                "new certificate in %s refused: %s; the current certificate keeps serving",
                self.settings.certfile,
                exc,
            )
            return False
        if state.material is not None and material.combined_pem() == state.material.combined_pem():
            return False
        await asyncio.to_thread(self.store.publish, "files", material)
        state.material, state.last_error = material, None
        if self.events is not None:
            self.events.record("certificate", f"certificate reloaded from {self.settings.certfile}, valid until "
                               f"{_when(material)}", names=list(state.plan.names), outcome="reloaded")
        logger.info("certificate reloaded from %s, valid until %s", self.settings.certfile, _when(material))
        return True

    # local CA and ACME
    def _issue_local(self, state: CertificateState) -> Material:
        material = self.local_ca.issue(list(state.plan.names))
        self.store.save_issued("local", material)
        return material

    def _obtain(self, state: CertificateState) -> Material:
        """Under the state directory's lock: adopt what another instance just obtained, else order."""
        names = list(state.plan.names)
        with self.store.lock(state.plan.label):
            stored = self.store.load_issued(state.plan.label, names)
            fresh = stored is not None and (state.material is None or stored.serial != state.material.serial)
            if stored is not None and fresh and (state.temporary or _not_due(stored)):
                return stored
            material = self.issuer.issue(names)
            self.store.save_issued(state.plan.label, material)
            return material

    async def _renew(self, state: CertificateState) -> bool:
        label = state.plan.label
        try:
            if label == "local":
                material = await asyncio.to_thread(self._issue_local, state)
            else:
                material = await asyncio.to_thread(self._obtain, state)
                state.ari = await asyncio.to_thread(self.issuer.suggested_renewal, material)
        except Exception as exc:  # any failure: keep serving the current certificate, retry with backoff
            state.failures += 1
            state.last_error = _one_line(exc)
            self._schedule(state)
            if self.events is not None:
                self.events.record("certificate", f"certificate for {', '.join(state.plan.names)} not renewed: "
                                   f"{state.last_error}", names=list(state.plan.names), outcome="failed")
            logger.warning(
                "certificate for %s not renewed (%s); retrying at %s, the current certificate keeps serving",
                ", ".join(state.plan.names),
                state.last_error,
                _when_dt(state.next_at),
            )
            return False
        await asyncio.to_thread(self.store.publish, label, material)
        state.material, state.temporary, state.failures, state.last_error = material, False, 0, None
        self._schedule(state)
        if self.events is not None:
            self.events.record("certificate", f"certificate for {', '.join(state.plan.names)} renewed, valid until "
                               f"{_when(material)}", names=list(state.plan.names), outcome="renewed")
        logger.info(
            "certificate for %s obtained (%s), valid until %s; next renewal at %s",
            ", ".join(state.plan.names),
            "local CA" if label == "local" else acme_directory(self.settings),
            _when(material),
            _when_dt(state.next_at),
        )
        return True


def _not_due(material: Material) -> bool:
    return renewal_time(material.not_before, material.not_after, None, _now()) > _now()


def _when(material: Material) -> str:
    return _when_dt(material.not_after)


def _when_dt(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
