"""When to renew a certificate: a pure function of its lifetime, the CA's advice and past failures."""

from __future__ import annotations

import datetime as dt

RETRY_FIRST = dt.timedelta(seconds=10)
RETRY_MAX = dt.timedelta(hours=1)


def retry_delay(failures: int, lifetime: dt.timedelta) -> dt.timedelta:
    """Exponential backoff after `failures` failed attempts, capped at an hour and at 1/20 of the lifetime
    (a short-lived certificate gets several tries before it expires)."""
    delay: dt.timedelta = RETRY_FIRST * (2 ** max(failures - 1, 0))
    return max(min(delay, RETRY_MAX, lifetime / 20), dt.timedelta(seconds=1))


def renewal_time(
    not_before: dt.datetime,
    not_after: dt.datetime,
    ari_window: tuple[dt.datetime, dt.datetime] | None,
    now: dt.datetime,
    failures: int = 0,
) -> dt.datetime:
    """The time to (re)try renewing a certificate valid from `not_before` to `not_after`.

    Normally when a third of the lifetime remains; earlier when the CA's ACME Renewal Information
    window (RFC 9773) starts earlier, at the window's middle. After `failures` failed attempts in a
    row: `now` plus a backoff. Never before `now`.
    """
    lifetime = not_after - not_before
    if failures > 0:
        return now + retry_delay(failures, lifetime)
    when = not_after - lifetime / 3
    if ari_window is not None:
        start, end = ari_window
        when = min(when, start + (end - start) / 2)
    return max(when, now)
