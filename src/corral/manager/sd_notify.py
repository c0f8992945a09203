"""The systemd notification protocol (sd_notify): tell the service manager how the service is doing.

systemd (with `Type=notify`) passes `$NOTIFY_SOCKET`, a datagram socket path or an abstract
`@name`; each message is one datagram of `KEY=VALUE` lines. The manager sends `READY=1` once the
first generation is ready, `STATUS=...` on changes, `STOPPING=1` on stop and `WATCHDOG=1` pings
at half of `$WATCHDOG_USEC`. Without `$NOTIFY_SOCKET` every call is a no-op.

Written here rather than taken from a library: `sdnotify` is unmaintained and untyped,
`systemd-python` needs libsystemd headers and a C build; the protocol is one `sendto`.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping, MutableMapping

log = logging.getLogger("corral.sd_notify")

ENV_KEYS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    """A client of `$NOTIFY_SOCKET`; `enabled` is False (and sending does nothing) without one."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = _socket_address(address) if address else None
        self.watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None
        if self.address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None, *, unset: bool = True) -> Notifier:
        """Read `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` (default: `os.environ`).

        With `unset` the three are removed so the templates, workers and pre-start steps the
        manager starts do not inherit them and talk to systemd in its name.
        """
        env: MutableMapping[str, str] = os.environ if environ is None else environ
        values = {key: env.get(key) for key in ENV_KEYS}
        if unset:
            for key in ENV_KEYS:
                env.pop(key, None)
        return cls(values["NOTIFY_SOCKET"] or None, _watchdog_usec(values))

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between `WATCHDOG=1` pings (half the unit's `WatchdogSec`), or None when off."""
        if self._sock is None or not self.watchdog_usec:
            return None
        return self.watchdog_usec / 2_000_000

    def notify(self, **fields: str | int | bool) -> bool:
        """Send one message: `notify(ready=True, status="2 workers ready")` sends
        `READY=1` and `STATUS=2 workers ready`. True if it was sent.

        Never raises and never blocks: a full or vanished socket only logs at debug level, since
        the service must keep serving whatever happens to its supervisor.
        """
        if self._sock is None or self.address is None:
            return False
        lines = [f"{key.upper()}={_value(value)}" for key, value in fields.items()]
        try:
            self._sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            log.debug("sd_notify to %r failed: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify(ready=True, **({"status": status} if status else {}))

    def status(self, text: str) -> bool:
        return self.notify(status=text)

    def stopping(self, status: str | None = None) -> bool:
        return self.notify(stopping=True, **({"status": status} if status else {}))

    def watchdog(self) -> bool:
        return self.notify(watchdog=True)

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more time to start or stop (slow pre-start steps, long drains)."""
        return self.notify(extend_timeout_usec=int(seconds * 1_000_000))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _socket_address(address: str) -> str | None:
    """A path, or `@name` for the abstract namespace; other kinds (vsock) are not supported."""
    if address.startswith("@"):
        return "\0" + address[1:]
    if address.startswith("/"):
        return address
    log.warning("NOTIFY_SOCKET=%r is not a path or @abstract socket; not notifying systemd", address)
    return None


def _watchdog_usec(values: Mapping[str, str | None]) -> int | None:
    """WATCHDOG_USEC applies to this process only if WATCHDOG_PID is unset or names it."""
    usec, pid = values["WATCHDOG_USEC"], values["WATCHDOG_PID"]
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec)


def _value(value: str | int | bool) -> str:
    """One line per field: a newline in a status text would start a bogus field."""
    if isinstance(value, bool):
        return "1" if value else "0"
    return " ".join(str(value).splitlines())
