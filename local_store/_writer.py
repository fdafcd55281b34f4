"""Writing rows into the store without ever hurting the caller.

Three paths:

* **Journaled** (:meth:`StoreWriter.start_attempt`, :meth:`StoreWriter.end_attempt`,
  the default): an attempt's row is appended to this process's journal
  (``_journal.py``: one ``write(2)`` of a JSON line, a few microseconds) before the
  send runs, its outcome when the send returns, and both are queued; the background
  thread commits them (as one row when both are in the same batch). A process killed
  before that commit leaves the rows in its journal, and the next writable open of the
  store commits them. The caller never waits for the store's write lock, unless half
  the queue bound is waiting for the background thread: then attempt rows are
  committed synchronously until it catches up, so sustained overload paces the caller
  to the store instead of filling the queue and dropping rows. A start row without a
  number gets one more than the delivery's attempts in the store and those of this
  process not yet committed.
* **Synchronous** (``journal=False``, or when the journal cannot be written): the row
  is committed on the caller's thread. The caller waits for the store lock at most
  ``hot_path_timeout_seconds``; if the store is locked by another process, read-only,
  full or gone, the row goes to the background queue instead (counted as
  ``deferred``) and the circuit stays open for ``hot_path_cooldown_seconds`` so later
  calls do not pay the wait again. A wait that times out behind this process's own
  background batch defers only that row.
* **Batched** (:meth:`StoreWriter.submit`, :meth:`StoreWriter.submit_lazy`): everything
  else goes to a bounded in-memory queue that a daemon thread writes with
  ``executemany``. A lazy row is built by that thread, off the caller's. Each batch is
  sized to hold the write lock about ``_BATCH_HOLD_SECONDS``, well inside the hot
  path's bound, so a caller never waits long behind it; and the thread waits for
  another process's write lock in short tries, letting go of ours in between.

The caller's thread never upgrades a store with an older schema (on a large store
that takes minutes): it defers its rows, and the background thread runs the upgrade.

The store's WAL is checkpointed by the background thread (PASSIVE, never waiting), not
by whichever commit happens to cross SQLite's auto-checkpoint threshold: a checkpoint
copies every page written since the last one, and on the caller's thread, after a
prune or a burst, that can take hundreds of milliseconds.

About once a second, when this process has written since, the background thread
also judges the traces queued in ``traces_to_judge`` (``_verdicts.py``), a few
hundred per transaction, so that ``undelivered`` finds their verdicts kept.

Nothing raises into the caller. Rows that cannot be kept (queue full) are counted
in the ``drops`` table by reason; so are write errors. Rows that fail to write stay
queued and are retried, so a fault that clears within the queue bound loses nothing.

:class:`StoreWriter` is one object in three parts, by role: the hot path
(``_hotpath.py``: opening on the caller's thread, attempt rows), the background
indexer (``_indexer.py``: batches, checkpoints, orphan replay, judging), and this
module (the queue, counters, flush, close and fork reset); ``_writer_base.py`` holds
the pacing constants and the state they share.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ._forkgate import GATE
from ._indexer import _Indexer
from ._journal import Journal
from ._ratelimit import RateLimitedLog
from ._rows import (
    INSERT_SQL,
    TABLE_COLUMNS,
)
from ._values import clean_row
from ._writer_base import (
    _BATCH_SIZE,
    _JOURNALED,
    _JUDGE_EVERY_SECONDS,
    _ORPHAN_CHECK_SECONDS,
    DEFAULT_FLUSH_INTERVAL_SECONDS,
    DEFAULT_HOT_PATH_COOLDOWN_SECONDS,
    DEFAULT_HOT_PATH_TIMEOUT_SECONDS,
    DEFAULT_MAX_QUEUE,
    _abandoned_connections,
    _Row,
    now_ms,
)

__all__ = ["DEFAULT_MAX_QUEUE", "TABLE_COLUMNS", "StoreWriter"]

_log = logging.getLogger("local_store")

# Writers alive in this process, so a fork can reset every one of them.
_writers: weakref.WeakSet[StoreWriter] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for writer in list(_writers):
        writer._reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class StoreWriter(_Indexer):
    """Appends rows to one store file from any number of threads.

    >>> w = StoreWriter("/tmp/deliveries.db", service="gateway")  # doctest: +SKIP
    >>> n = w.start_attempt({"delivery_id": "d1", "trace_id": "...", "span_id": "...",
    ...                      "status": "started", "started_at_ms": 0})  # doctest: +SKIP
    >>> w.close()  # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        service: str | None = None,
        max_queue: int = DEFAULT_MAX_QUEUE,
        flush_interval_seconds: float = DEFAULT_FLUSH_INTERVAL_SECONDS,
        hot_path_timeout_seconds: float = DEFAULT_HOT_PATH_TIMEOUT_SECONDS,
        hot_path_cooldown_seconds: float = DEFAULT_HOT_PATH_COOLDOWN_SECONDS,
        journal: bool = True,
    ) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue}")
        if flush_interval_seconds <= 0:
            raise ValueError(f"flush_interval_seconds must be > 0, got {flush_interval_seconds}")
        if hot_path_timeout_seconds < 0:
            raise ValueError(
                f"hot_path_timeout_seconds must be >= 0, got {hot_path_timeout_seconds}"
            )
        self.path = Path(path)
        self.service = service
        self.max_queue = max_queue
        self.flush_interval_seconds = flush_interval_seconds
        self.hot_path_timeout_seconds = hot_path_timeout_seconds
        self.hot_path_cooldown_seconds = hot_path_cooldown_seconds
        self.journal = journal
        self.writer_id: int | None = None
        self._log = RateLimitedLog(_log)
        self._closed = False
        self._init_process_state()
        _writers.add(self)
        # Open (or create) the store now, so this process registers as a writer at
        # start-up and a problem is logged at once. Nothing here raises: a store that
        # cannot be opened, or that has an older schema, is left to the background
        # thread, which retries it or upgrades it off the caller's thread.
        self._hot_connection()

    # -- state that must be fresh in every process -------------------------------

    def _init_process_state(self) -> None:
        self._pid = os.getpid()
        # Held for every write transaction in this process, hot path and background
        # alike: waiting on it is cheaper and fairer than SQLite's busy polling.
        self._lock = threading.Lock()
        self._cond = threading.Condition()  # guards the queue and counters below
        self._queue: deque[tuple[str, _Row]] = deque()
        self._in_flight = 0  # rows taken off the queue by a batch not yet committed
        self._batch_rows = _BATCH_SIZE  # the next batch's size, adapted to its lock time
        self._bg_lock_since = 0.0  # monotonic time the background thread took the lock
        self._hot_commits = 0  # hot-path commits since the last checkpoint
        self._bg_commits = 0  # background commits since the last checkpoint
        self._last_checkpoint = time.monotonic()
        self._upgrade_wanted = False  # the hot path found an older schema
        self._journal = Journal(self.path)
        # Attempt numbers handed out for rows not yet committed, by delivery, and the
        # connection that reads the committed ones (both under _number_lock).
        self._number_lock = threading.Lock()
        self._pending_numbers: dict[str, int] = {}
        self._read_conn: sqlite3.Connection | None = None
        self._read_identity: tuple[int, int] | None = None
        self._read_checked = 0.0  # monotonic time the read connection's file was checked
        self._next_orphan_check = time.monotonic() + _ORPHAN_CHECK_SECONDS
        self._next_judging = time.monotonic() + _JUDGE_EVERY_SECONDS
        # Set by every commit of rows (which may queue traces to judge): an idle writer
        # makes no SQLite call for judging. True at first, to judge what waits already.
        self._judging_wanted = True
        self._hot_conn: sqlite3.Connection | None = None
        self._hot_identity: tuple[int, int] | None = None
        self._hot_open_until = 0.0  # monotonic time the hot path stays bypassed until
        self._registered_in: tuple[int, int] | None = None  # file our writers row is in
        self._bg_conn: sqlite3.Connection | None = None
        self._bg_identity: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None
        self._stop = False
        self._flush_requests = 0
        self._flushed_through = 0  # flush requests the thread has fully honoured
        self._pending_drops: dict[str, list[Any]] = {}
        self._totals: dict[str, int] = {}
        self.writer_id = None

    def _reset_after_fork(self) -> None:
        for conn in (self._hot_conn, self._bg_conn, self._read_conn):
            if conn is not None:
                _abandoned_connections.append(conn)
        self._journal.forget_after_fork()
        self._log = RateLimitedLog(_log)  # its lock may have been held by a parent's thread
        # The parent writes what it had queued; the child starts empty.
        self._init_process_state()


    def _wake_background(self) -> None:
        with self._cond:
            if self._thread is None:
                if not self._closed:
                    self._start_thread()
            else:
                self._cond.notify()

    # -- batched rows --------------------------------------------------------------

    def submit(self, table: str, row: Mapping[str, Any]) -> None:
        """Queue a row for the background writer. Never blocks, never raises."""
        if table not in INSERT_SQL:
            raise ValueError(f"unknown table {table!r}; expected one of {sorted(INSERT_SQL)}")
        if self._closed:
            self.count_drop("closed")
            return
        row = dict(row)
        row.setdefault("service", self.service)
        self._clean(table, row)
        self._enqueue(table, row)

    def submit_lazy(self, table: str, make_row: Callable[[], Mapping[str, Any]]) -> None:
        """Queue a row that the background thread builds by calling ``make_row()``.

        For rows that take work to build: the caller pays for an append only. A
        ``make_row`` that raises loses its row, counted as ``unbuildable_row``.
        Never blocks, never raises (except for an unknown table, as :meth:`submit`).
        """
        if table not in INSERT_SQL:
            raise ValueError(f"unknown table {table!r}; expected one of {sorted(INSERT_SQL)}")
        if self._closed:
            self.count_drop("closed")
            return
        self._enqueue(table, make_row)

    def _enqueue(self, kind: str, row: _Row) -> bool:
        """Queue ``row``; False when the queue is full (the row is counted as dropped)."""
        if os.getpid() != self._pid:
            self._reset_after_fork()
        with self._cond:
            if len(self._queue) + self._in_flight >= self.max_queue:
                self._count_locked("queue_full", 1, None)
                if not callable(row) and _JOURNALED in row:
                    self._journal.done([row.pop(_JOURNALED)])
                return False
            self._queue.append((kind, row))
            if self._thread is None:
                self._start_thread()
            elif len(self._queue) >= self._batch_rows:
                self._cond.notify()
            return True

    def count_drop(self, reason: str, n: int = 1, *, error: str | None = None) -> None:
        """Count ``n`` records lost for ``reason`` (with the latest error text, if any).

        Counts are kept in memory (:meth:`stats`) and added to the ``drops`` table by
        the background thread, so they survive while the store is unavailable.
        """
        with self._cond:
            self._count_locked(reason, n, error)
            if self._thread is None and not self._closed:
                self._start_thread()

    def _clean(self, table: str, row: dict[str, Any]) -> None:
        """Fit ``row``'s values to their columns (``_values.py``), counting each one
        that did not fit: only that value is lost, not the row."""
        problems = clean_row(table, row, now_ms())
        if problems:
            with self._cond:
                for reason, detail in problems:
                    self._count_locked(reason, 1, detail)
                if self._thread is None and not self._closed:
                    self._start_thread()

    def _count_locked(self, reason: str, n: int, error: str | None) -> None:
        self._totals[reason] = self._totals.get(reason, 0) + n
        t = now_ms()
        pending = self._pending_drops.get(reason)
        if pending is None:
            self._pending_drops[reason] = [n, t, t, error]
        else:
            pending[0] += n
            pending[2] = t
            if error is not None:
                pending[3] = error

    def stats(self) -> dict[str, int]:
        """Counters since this writer started.

        Drop reasons (``queue_full``, ``closed``, ``lost_at_close``, ``unwritable_row``,
        ``unbuildable_row``, and any the caller counts) are records lost; ``deferred``
        counts rows that skipped the hot path and went through the queue;
        ``left_in_journal`` counts attempt rows not committed by :meth:`close` that stay
        in the journal for the next writer to commit (not lost);
        ``write_errors`` counts failed batch writes that were kept for retry; ``queued``
        is the queue length now.
        """
        with self._cond:
            out = dict(self._totals)
            out["queued"] = len(self._queue) + self._in_flight
        return out


    # -- flush and close -------------------------------------------------------------

    def flush(self, timeout_seconds: float = 5.0) -> bool:
        """Write everything queued so far. True if it all reached the store in time."""
        deadline = time.monotonic() + timeout_seconds
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                if not self._queue and not self._pending_drops:
                    return True
                if self._closed:
                    return False
                self._start_thread()
            self._flush_requests += 1
            target = self._flush_requests
            self._cond.notify_all()
            while self._flushed_through < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def close(self, timeout_seconds: float = 5.0) -> bool:
        """Flush, mark this writer ended, and close. True if nothing was left behind."""
        if self._closed:
            return True
        ok = self.flush(timeout_seconds)
        with self._cond:
            self._closed = True
            self._stop = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(max(0.0, min(timeout_seconds, 1.0)))
        with self._cond:
            left = len(self._queue) + self._in_flight
            journaled = sum(1 for _, row in self._queue if not callable(row) and _JOURNALED in row)
        if left - journaled:
            self._totals["lost_at_close"] = self._totals.get("lost_at_close", 0) + left - journaled
            self._log.warning(
                "close", "otel-delivery closed with %d rows not written to %s",
                left - journaled, self.path,
            )
        if journaled:
            self._totals["left_in_journal"] = self._totals.get("left_in_journal", 0) + journaled
            self._log.warning(
                "close", "otel-delivery closed with %d attempt rows not yet in %s; they stay "
                "in its journal for the next writer to replay", journaled, self.path,
            )
        self._journal.close(keep_rows=True)
        with self._lock, GATE:
            conn = self._hot_conn
            if self._file_replaced(self._hot_identity):
                conn = None  # never mark rows in a file that is no longer the store
            if conn is not None and self.writer_id is not None:
                try:
                    t = now_ms()
                    # Attempts of ours still open at shutdown never finished.
                    conn.execute(
                        "UPDATE attempts SET status = 'interrupted', ended_at_ms = ? "
                        "WHERE writer_id = ? AND status = 'started'",
                        (t, self.writer_id),
                    )
                    conn.execute(
                        "UPDATE writers SET ended_at_ms = ? WHERE id = ?", (t, self.writer_id)
                    )
                    conn.commit()
                except Exception:
                    pass
            self._release(self._hot_conn, self._hot_identity)
            self._release(self._bg_conn, self._bg_identity)
            with self._number_lock:
                self._close_read()
            self._hot_conn = None
            self._bg_conn = None
        return ok and left == 0
