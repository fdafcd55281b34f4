"""What the indexer does between batches: checkpointing, dead writers' journals, judging.

* **Checkpointing.** The store's WAL is checkpointed here (PASSIVE, never waiting), not
  by whichever commit happens to cross SQLite's auto-checkpoint threshold: a
  checkpoint copies every page written since the last one, and after a prune or a
  burst that can take hundreds of milliseconds. It runs after
  :data:`CHECKPOINT_EVERY_COMMITS` commits, or a second after a write.
* **Orphan replay.** At the thread's first turn and then about once a second, the
  journals of writers that died (another worker of a multi-process gateway, say) are
  committed (``_replay.py``); ``open_store`` does it at every open too.
* **Judging.** About once a second, when this process has written since, the traces
  queued in ``traces_to_judge`` are judged (``_verdicts.py``), a few hundred per
  transaction, so that ``undelivered`` finds their verdicts kept. An idle writer makes
  no SQLite call for it: a thread inside SQLite while the process forks is what a
  forked child must never inherit.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable

import sqlite_utils

from ._forkgate import GATE
from ._ratelimit import RateLimitedLog
from ._replay import replay_orphans
from ._storefile import StoreFile
from ._verdicts import refresh_verdicts

__all__ = ["CHECKPOINT_EVERY_COMMITS", "Upkeep", "is_busy"]

CHECKPOINT_EVERY_COMMITS = 200
CHECKPOINT_INTERVAL_SECONDS = 1.0
ORPHAN_CHECK_SECONDS = 1.0
JUDGE_EVERY_SECONDS = 1.0
JUDGE_BATCH = 200
JUDGE_TURN_SECONDS = 0.1


def is_busy(exc: sqlite3.OperationalError) -> bool:
    """True for SQLITE_BUSY: another connection holds the write lock."""
    code = getattr(exc, "sqlite_errorcode", None)  # None before Python 3.11
    return code & 0xFF == 5 if isinstance(code, int) else "locked" in str(exc)


class Upkeep:
    """The schedule of the indexer's chores, and the chores. Used by its thread only."""

    def __init__(
        self, store: StoreFile, lock: threading.Lock,
        connection: Callable[[], sqlite3.Connection | None], log: RateLimitedLog,
        callers_waiting: Callable[[], bool],
    ) -> None:
        self._store = store
        self._callers_waiting = callers_waiting  # paced callers wait for the next batch
        self._lock = lock  # the indexer's: held for every write transaction
        self._connection = connection
        self._log = log
        self.commits = 0  # commits since the last checkpoint
        self._last_checkpoint = time.monotonic()
        # Due at the thread's first turn: a worker that died since this process
        # opened the store is replayed as soon as this one writes.
        self._next_orphan_check = time.monotonic()
        self._next_judging = time.monotonic() + JUDGE_EVERY_SECONDS
        # Set by every commit of rows (which may queue traces to judge). True at first,
        # to judge what waits already.
        self.judging_wanted = True

    def wrote(self) -> None:
        """The indexer committed rows."""
        self.commits += 1
        self.judging_wanted = True

    def run(self) -> None:
        self.maybe_checkpoint()
        self._maybe_replay_orphans()
        self._maybe_judge()

    def maybe_checkpoint(self) -> None:
        elapsed = time.monotonic() - self._last_checkpoint
        if not (self.commits >= CHECKPOINT_EVERY_COMMITS
                or (self.commits and elapsed >= CHECKPOINT_INTERVAL_SECONDS)):
            return
        self.commits = 0
        self._last_checkpoint = time.monotonic()
        try:
            conn = self._connection()
            if conn is None:
                return
            # Every write of this process is made on this thread, so nothing of ours
            # races the copy; PASSIVE copies what it can without waiting for others.
            with GATE:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except Exception as exc:
            self._log.warning("checkpoint", "otel-delivery could not checkpoint %s (%s)",
                              self._store.path, exc)

    def _maybe_replay_orphans(self) -> None:
        if time.monotonic() < self._next_orphan_check:
            return
        # Due at the thread's first turn: a worker that died since this process
        # opened the store is replayed as soon as this one writes.
        self._next_orphan_check = time.monotonic()
        try:
            conn = self._connection()
            if conn is None:
                return
            with self._lock, GATE:
                if replay_orphans(conn, self._store.path):
                    self.wrote()
        except Exception as exc:
            self._log.warning("replay", "otel-delivery could not replay journals of %s (%s)",
                              self._store.path, exc)

    def _maybe_judge(self) -> None:
        """Judge waiting traces for at most ``JUDGE_TURN_SECONDS``, our lock let go
        between transactions."""
        if not self.judging_wanted or time.monotonic() < self._next_judging:
            return
        self._next_judging = time.monotonic() + JUDGE_EVERY_SECONDS
        self.judging_wanted = False
        turn_ends = time.monotonic() + JUDGE_TURN_SECONDS
        try:
            conn = self._connection()
            if conn is None:
                self.judging_wanted = True
                return
            with GATE:
                db = sqlite_utils.Database(conn, execute_plugins=False)
            while True:
                taken = self._judge_some(conn, db)
                if taken is None or (taken == JUDGE_BATCH and time.monotonic() >= turn_ends):
                    self.judging_wanted = True  # busy, or more left: the next turn
                    return
                if taken < JUDGE_BATCH:
                    return
                if self._callers_waiting():
                    self.judging_wanted = True  # rows first; the rest next turn
                    return
        except Exception as exc:
            self.judging_wanted = True
            self._log.warning("judge", "otel-delivery could not judge undelivered replies "
                              "in %s (%s)", self._store.path, exc)

    def _judge_some(self, conn: sqlite3.Connection, db: sqlite_utils.Database) -> int | None:
        """One transaction: how many traces it judged (0 when none waits, looked at
        without the write lock), or None when another process is writing."""
        with GATE:
            if conn.execute("SELECT 1 FROM traces_to_judge LIMIT 1").fetchone() is None:
                return 0
        with self._lock, GATE:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if is_busy(exc):
                    return None
                raise
            try:
                taken = refresh_verdicts(db, limit=JUDGE_BATCH)
                conn.execute("COMMIT")
            except BaseException:
                conn.rollback()
                raise
        if taken:
            self.commits += 1
        return taken
