"""What an HTTP/2 connection may cost the worker, and the budgets that end a connection which abuses it.

Each limit is an option (`--h2-*`): the number of streams open at once (advertised in SETTINGS, and a bound on the
app tasks a connection runs, reset streams included), the decoded size of a header list (HPACK decoding stops
there: a "bomb" of references to one large table entry costs no more), the size of a header block still arriving
in CONTINUATION frames, the streams a client may reset in a window of time (the rapid-reset attack,
CVE-2023-44487), the control frames (SETTINGS, PING, PRIORITY, WINDOW_UPDATE, RST_STREAM) it may send per second,
and how long a response may wait on a client that does not read (a zero window, a full socket buffer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import h2.settings


@dataclass(frozen=True, slots=True)
class H2Limits:
    max_concurrent_streams: int = 100  # advertised; a connection never runs more app tasks than this
    max_header_list_size: int = 65536  # decoded bytes of a request's header list (RFC 9113 counting): a stream
    # beyond it is refused, and an encoded header block (HEADERS + CONTINUATION) beyond it ends the connection
    max_resets: int = 200  # client stream resets within RESET_WINDOW: more is an attack, GOAWAY ENHANCE_YOUR_CALM
    max_control_frames: int = 1000  # control frames per second, plus two per DATA frame sent (window updates)
    send_timeout: float = 30.0  # seconds a response may make no progress on a client that does not read
    header_timeout: float = 10.0  # seconds from the connection's start to its first request (--header-timeout)
    keep_alive: float = 5.0  # seconds a connection with no stream stays open (--keep-alive)


RESET_WINDOW = 10.0  # seconds over which client resets are counted
CONTROL_WINDOW = 1.0  # seconds over which control frames are counted


class Budget:
    """A count that may not pass `limit` within any `window` seconds (two fixed windows, the previous one weighed
    by how much of it still overlaps: no per-event timestamps are kept)."""

    __slots__ = ("_count", "_previous", "_start", "limit", "window")

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._start = 0.0
        self._count = 0
        self._previous = 0

    def spend(self, now: float, amount: int = 1) -> bool:
        """Count `amount`; False once the estimate over the last `window` passes `limit`."""
        elapsed = now - self._start
        if elapsed >= self.window:
            self._previous = self._count if elapsed < 2 * self.window else 0
            self._start = now - (elapsed % self.window if elapsed < 2 * self.window else 0.0)
            self._count = 0
            elapsed = now - self._start
        self._count += amount
        overlap = 1.0 - elapsed / self.window
        return self._count + self._previous * overlap <= self.limit

    def refund(self, amount: int) -> None:
        """Give back budget: each DATA frame sent earns the client two WINDOW_UPDATEs."""
        self._count -= amount


class LocalSettings(h2.settings.Settings):
    """The settings Corral advertises, with h2's own count of open streams set at twice the advertised limit.

    RFC 9113, 5.1.2: a stream past the advertised limit is a stream error. h2 makes it a connection error, so its
    count is only the last resort (h2 reads a whole packet before Corral sees its streams); Corral refuses the
    stream itself (REFUSED_STREAM, which clients retry) and counts the refusal as a reset, so a client that keeps
    ignoring the limit ends on the reset budget.
    """

    @property
    def max_concurrent_streams(self) -> int:
        return 2 * self[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS]

    @max_concurrent_streams.setter
    def max_concurrent_streams(self, value: int) -> None:
        self[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = value


def header_block_pending(connection: Any) -> int:
    """Bytes of a header block still arriving in CONTINUATION frames (h2 holds them until the block ends, up to 64
    frames): a flood is stopped at the header list's size rather than h2's frame count."""
    frames = getattr(connection.incoming_buffer, "_headers_buffer", None)
    return sum(len(frame.data) for frame in frames) if frames else 0
