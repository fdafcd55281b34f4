"""Retention by default: a gateway's store is pruned by age without anyone's cron.

:class:`RetentionKeeper` is a daemon thread that, every ``interval_seconds`` (the first
time shortly after start), runs :func:`~local_store.prune` on the store: delivered
attempts older than ``keep_delivered_for_seconds`` go, failures older than
``keep_failed_for_seconds``, then the space is given back. Prune works in batches
sized to hold the write lock about 10 ms and never touches the gateway's hot path
(attempt rows go to the journal, which takes no lock), so a gateway's calls do not
wait for it. A prune that fails (the store busy, read-only, gone) is logged at a
limited rate and tried again at the next turn.

The thread runs each prune in a child process (``python -m local_store._retention``)
and only waits for it. A prune holds SQLite's process-wide mutexes for long
stretches; in the gateway's own process, an ``os.fork()`` (a worker pool) at such a
moment would leave the child waiting for ever on a mutex no thread of it holds (see
``_forkgate.py``). A child process also keeps the prune's work off the gateway's GIL.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
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
# A prune of a large store can take minutes (RESULTS.md #5); past this, the next turn.
_CHILD_TIMEOUT_SECONDS = 3600.0
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

    def run_in_child(self) -> PruneResult | None:
        """:meth:`run_once` in a child process (what the thread does each turn)."""
        args = [sys.executable, "-m", "local_store._retention", str(self.path),
                _arg(self.keep_delivered_for_seconds), _arg(self.keep_failed_for_seconds)]
        try:
            done = subprocess.run(args, capture_output=True, text=True, check=False,
                                  timeout=_CHILD_TIMEOUT_SECONDS)
        except (OSError, subprocess.SubprocessError) as exc:
            _log.warning("retention", "otel-delivery could not start a prune of %s (%s)",
                         self.path, exc)
            return None
        line = done.stdout.strip().splitlines()[-1:] if done.returncode == 0 else []
        if not line or line[0] == "null":
            if done.returncode != 0:
                _log.warning("retention", "otel-delivery prune of %s failed: %s", self.path,
                             done.stderr.strip()[-300:])
            return None
        result = PruneResult(**json.loads(line[0]))
        self.last_result = result
        self.runs += 1
        return result

    def _run(self) -> None:
        wait = self.first_run_after_seconds
        while not self._stop.wait(wait):
            self.run_in_child()
            wait = self.interval_seconds


def _checked(name: str, value: float | None) -> float | None:
    return None if value is None else check_seconds(name, value)


def _arg(seconds: float | None) -> str:
    return "none" if seconds is None else repr(float(seconds))


def _main(argv: list[str]) -> int:
    """``python -m local_store._retention PATH DELIVERED FAILED``: one prune, its
    result as one line of JSON (``null`` when it could not run)."""
    path, delivered, failed = argv
    keeper = RetentionKeeper(
        path,
        keep_delivered_for_seconds=None if delivered == "none" else float(delivered),
        keep_failed_for_seconds=None if failed == "none" else float(failed),
    )
    result = keeper.run_once() if keeper.enabled else None
    print(json.dumps(None if result is None else result.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
