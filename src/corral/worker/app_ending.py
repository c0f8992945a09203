"""How an app's call ends, alike for an HTTP/1.1 request (`http/cycle.py`) and an HTTP/2 stream (`http2/stream.py`),
as uvicorn's cycles answer it: an app that fails before anything is written gets a 500 sent for it; one that fails
later, returns a value or returns mid-response has its exchange ended (the connection, or the stream)."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("uvicorn.error")


class AppEnding:
    """The state an exchange's end is judged on, and the judgement; subclasses say how to end mid-response."""

    __slots__ = ("complete", "disconnected", "head", "started")
    started: bool  # the app sent http.response.start
    head: Any  # a response head not written yet, or None
    complete: bool  # the whole response was handed over
    disconnected: bool  # the client went away

    def end_mid_response(self) -> None:
        raise NotImplementedError

    def raised(self, exc: BaseException) -> bool:
        """The app raised `exc`: True when nothing was written yet, and the client is to get a 500."""
        log.error("Exception in ASGI application\n", exc_info=exc)
        if not self.started or self.head is not None:
            self.started = False
            self.head = None
            return True
        self.end_mid_response()
        return False

    def returned(self, result: object) -> bool:
        """The app returned `result` short of a complete response (or with a value): True when it started none,
        and the client is to get a 500."""
        if result is not None:
            log.error("ASGI callable should return None, but returned '%s'.", result)
            self.end_mid_response()
        elif not self.started and not self.disconnected:
            log.error("ASGI callable returned without starting response.")
            return True
        elif not self.complete and not self.disconnected:
            log.error("ASGI callable returned without completing response.")
            self.end_mid_response()
        return False
