"""Logging that cannot flood: one line per key per interval, with a count of the rest."""

from __future__ import annotations

import logging
import threading
import time

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """Log at most one warning per ``key`` every ``interval_seconds``.

    Suppressed messages are counted and the count is reported with the next line
    that gets through, so nothing is hidden, only summarised.
    """

    def __init__(self, logger: logging.Logger, interval_seconds: float = 60.0) -> None:
        self._logger = logger
        self._interval = interval_seconds
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return
            self._last[key] = now
            suppressed = self._suppressed.pop(key, 0)
        try:
            if suppressed:
                message += " (%d similar messages suppressed)"
                args = (*args, suppressed)
            self._logger.warning(message, *args)
        except Exception:
            pass
