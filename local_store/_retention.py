"""Retention by default: a gateway's store is pruned by age without anyone's cron.

:class:`RetentionKeeper` is a daemon thread that, every ``interval_seconds`` (the first
time shortly after start), runs :func:`~local_store.prune` on the store: delivered
attempts older than ``keep_delivered_for_seconds`` go, failures older than
``keep_failed_for_seconds``, then the space is given back. Prune works in batches
sized to hold the write lock about 10 ms and never touches the gateway's hot path
(attempt rows go to the journal, which takes no lock), so a gateway's calls do not
wait for it. A prune that fails (the store busy, read-only, gone) is logged at a
limited rate and tried again at the next turn.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from ._arguments import check_seconds
from ._prune import PruneResult, prune
from ._ratelimit import RateLimitedLog
from ._schema import open_store
from .exceptions import InvalidArgumentError

__all__ = [
    "DEFAULT_KEEP_DELIVERED_FOR_SECONDS",
    "DEFAULT_KEEP_FAILED_FOR_SECONDS",
    "DEFAULT_RETENTION_INTERVAL_SECONDS",
    "RetentionKeeper",
]

DEFAULT_KEEP_DELIVERED_FOR_SECONDS = 30 * 86400.0
DEFAULT_KEEP_FAILED_FOR_SECONDS = 90 * 86400.0
DEFAULT_RETENTION_INTERVAL_SECONDS = 3600.0
_FIRST_RUN_AFTER_SECONDS = 60.0
# "Keep for ever" for failures while deliveries are pruned: about 150 years (under the
# 10000-week bound on durations).
_FOREVER_SECONDS = 5e9

_log = RateLimitedLog(logging.getLogger("local_store"))


class RetentionKeeper:
    """Prunes ``path`` by age in the background until :meth:`stop`.

    >>> keeper = RetentionKeeper("deliveries.db", keep_delivered_for_seconds=30 * 86400,
    ...                          keep_failed_for_seconds=90 * 86400)  # doctest: +SKIP
    >>> keeper.start()  # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | Path,
        *,
        keep_delivered_for_seconds: float | None = DEFAULT_KEEP_DELIVERED_FOR_SECONDS,
        keep_failed_for_seconds: float | None = DEFAULT_KEEP_FAILED_FOR_SECONDS,
        interval_seconds: float = DEFAULT_RETENTION_INTERVAL_SECONDS,
        first_run_after_seconds: float = _FIRST_RUN_AFTER_SECONDS,
    ) -> None:
        delivered = _checked("keep_delivered_for_seconds", keep_delivered_for_seconds)
        failed = _checked("keep_failed_for_seconds", keep_failed_for_seconds)
        if (delivered is None and failed is not None) or (
            delivered is not None and failed is not None and failed < delivered
        ):
            raise InvalidArgumentError(
                f"keep_failed_for_seconds ({failed}) must be at least "
                f"keep_delivered_for_seconds ({delivered}, None: for ever): failures are "
                "kept longer than deliveries"
            )
        check_seconds("interval_seconds", interval_seconds)
        check_seconds("first_run_after_seconds", first_run_after_seconds, allow_zero=True)
        self.path = Path(path)
        self.keep_delivered_for_seconds = delivered
        self.keep_failed_for_seconds = failed
        self.interval_seconds = interval_seconds
        self.first_run_after_seconds = first_run_after_seconds
        self.last_result: PruneResult | None = None
        self.runs = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        """False when both classes are kept for ever: there is nothing to prune."""
        kept = (self.keep_delivered_for_seconds, self.keep_failed_for_seconds)
        return kept != (None, None)

    def start(self) -> None:
        if not self.enabled or self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._run, name="otel-delivery-retention", daemon=True
        )
        self._thread.start()

    def stop(self, timeout_seconds: float = 1.0) -> None:
        """Stop after the current batch; a prune in progress leaves a consistent store."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout_seconds)

    def run_once(self) -> PruneResult | None:
        """One prune now (what the thread does each turn); None when it could not run."""
        delivered = self.keep_delivered_for_seconds
        failed = self.keep_failed_for_seconds
        kwargs: dict[str, Any] = {
            "older_than_seconds": delivered if delivered is not None else _FOREVER_SECONDS,
            "keep_failed_for_seconds": failed if failed is not None else _FOREVER_SECONDS,
        }
        try:
            if not self.path.is_file():
                return None
            db = open_store(self.path)
            try:
                result = prune(db, **kwargs)
            finally:
                db.close()
        except Exception as exc:
            _log.warning("retention", "otel-delivery could not prune %s now (%s); will retry",
                         self.path, exc)
            return None
        self.last_result = result
        self.runs += 1
        return result

    def _run(self) -> None:
        wait = self.first_run_after_seconds
        while not self._stop.wait(wait):
            self.run_once()
            wait = self.interval_seconds


def _checked(name: str, value: float | None) -> float | None:
    return None if value is None else check_seconds(name, value)
