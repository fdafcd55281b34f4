"""The background thread that commits journaled rows into the store.

It takes the rows the backlog (``_backlog.py``) holds, in order, and commits them a
batch per transaction with ``executemany`` (``_rows.py``'s SQL, the same the replay of
a dead writer's journal runs); an attempt whose start and outcome are in one batch is
written once. Each batch is sized to hold the write lock about
:data:`BATCH_HOLD_SECONDS`, so other processes writing the store never wait long
behind it, and the thread waits for another process's write lock in short tries. Once
a batch is committed its journal lines are let go (``Journal.done``).

Rows that cannot be committed (the store locked for long, read-only, full, gone) are
queued again and retried, with a growing pause, so a fault that clears within the
queue bound loses nothing. A row SQLite refuses is counted as ``unwritable_row``, and
the rows around it are written. The thread opens (creating, or upgrading, a store of
an older schema) the store itself; between batches it does the chores of
``_upkeep.py``. Every SQLite call runs inside the fork gate.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import Any

from ._backlog import Backlog, Drops, Queued
from ._forkgate import GATE
from ._numbers import AttemptNumbers
from ._ratelimit import RateLimitedLog
from ._rows import DROP_SQL, KIND_SQL, OUTCOME_COLUMNS, row_params
from ._storefile import FileIdentity, StoreFile, gated, now_ms
from ._upkeep import Upkeep, is_busy
from .exceptions import StoreError, StoreUpgradeNeededError

__all__ = ["BATCH_HOLD_SECONDS", "BATCH_SIZE", "MIN_BATCH", "Indexer"]

# Rows per transaction: the most, the fewest, and the lock time aimed at.
BATCH_SIZE = 1_000
MIN_BATCH = 20
BATCH_HOLD_SECONDS = 0.015
# Another process's write lock is waited for in tries this long, for this long at most.
_BUSY_TRY_SECONDS = 0.02
_BUSY_GIVE_UP_SECONDS = 5.0
_OPEN_TIMEOUT_SECONDS = 5.0
# The longest the lock is left free between two batches when rows wait.
_GAP_SECONDS = 0.005


class _StoreBusy(Exception):
    """Another process holds the write lock; the batch was not started."""


def _is_row_problem(exc: BaseException) -> bool:
    """True when a write failed because of the row itself, not the store."""
    if isinstance(exc, StoreError):
        return False
    return isinstance(
        exc,
        (OverflowError, TypeError, ValueError, sqlite3.InterfaceError,
         sqlite3.IntegrityError, sqlite3.ProgrammingError),
    )


def merge_attempts(batch: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """``batch`` with each attempt whose start and outcome are both in it written once:
    the start row with the outcome's columns, as an outcome (which inserts a row that
    is not there yet). One statement and one round of rollup triggers instead of two;
    the row that results is the same."""
    starts: dict[Any, int] = {}  # span_id -> position of its start row in out
    out: list[tuple[str, dict[str, Any]]] = []
    for kind, row in batch:
        span_id = row.get("span_id")
        if kind == "attempts:start" and span_id is not None and span_id not in starts:
            starts[span_id] = len(out)
        elif kind == "attempts:end" and span_id in starts:
            i = starts.pop(span_id)
            merged = dict(out[i][1])
            merged.update({c: row.get(c) for c in OUTCOME_COLUMNS})
            out[i] = ("attempts:end", merged)
            continue
        out.append((kind, row))
    return out


def _write_singly(conn: sqlite3.Connection, kind: str, rows: list[dict[str, Any]]) -> list[str]:
    """Write ``rows`` one by one; describe the ones SQLite refuses."""
    refused = []
    for row in rows:
        try:
            conn.execute(KIND_SQL[kind], row_params(kind, row))
        except Exception as exc:
            if not _is_row_problem(exc):
                raise
            refused.append(f"{kind}: {exc!r}"[:300])
    return refused


class Indexer:
    """Commits the backlog's rows from a daemon thread, started by the first row."""

    def __init__(
        self, store: StoreFile, backlog: Backlog, numbers: AttemptNumbers,
        log: RateLimitedLog, *, flush_interval_seconds: float,
    ) -> None:
        self.store = store
        self.backlog = backlog
        self.numbers = numbers
        self.flush_interval_seconds = flush_interval_seconds
        self._log = log
        self.lock = threading.Lock()  # held for every write transaction of this process
        self.conn: sqlite3.Connection | None = None
        self._identity: FileIdentity | None = None
        self.batch_rows = BATCH_SIZE  # the next batch's size, adapted to its lock time
        self.upkeep = Upkeep(store, self.lock, self.connection, log, backlog.over_half)
        self._thread: threading.Thread | None = None
        self._stop = False
        self._woken = False  # a poke came while the thread was not waiting
        self._upgrade_wanted = False
        self._flush_requests = 0
        self._flushed_through = 0  # flush requests the thread has fully honoured
        backlog.poke = self._poke

    # -- the store connection ---------------------------------------------------------

    def open_now(self, timeout_seconds: float) -> None:
        """Open the store on the caller's thread (at the writer's start, so the process
        registers as a writer and a problem is logged at once). Never upgrades: on a
        large store that takes minutes, so the thread does it."""
        with self.lock:
            try:
                self._open(timeout_seconds, upgrade=False)
            except Exception as exc:
                self._log.warning("open", "otel-delivery cannot open %s yet (%s); rows wait "
                                  "in the journal", self.store.path, exc)
                if isinstance(exc, StoreUpgradeNeededError):
                    with self.backlog.cond:
                        self._upgrade_wanted = True
                        self._poke(urgent=True)

    def connection(self) -> sqlite3.Connection | None:
        """The open connection, (re)opened if need be; None if the store cannot be."""
        if self.conn is not None and not self.store.replaced(self._identity):
            return self.conn
        with self.lock:
            try:
                self.close_connection()
                return self._open(_OPEN_TIMEOUT_SECONDS)
            except Exception as exc:
                self._log.warning("bg-open", "otel-delivery cannot open %s (%s)",
                                  self.store.path, exc)
                return None

    @gated
    def _open(self, timeout_seconds: float, *, upgrade: bool = True) -> sqlite3.Connection:
        conn, self._identity = self.store.open(
            timeout_seconds, upgrade=upgrade,
            on_moved_aside=lambda aside: self.backlog.count(
                "store_moved_aside", error=f"damaged store moved to {aside}"),
        )
        conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TRY_SECONDS * 1000)}")
        self.conn = conn
        return conn

    def close_connection(self) -> None:
        conn, self.conn = self.conn, None
        self.store.release(conn, self._identity)

    # -- the thread -------------------------------------------------------------------

    def _poke(self, urgent: bool = False) -> None:
        """Start the thread, or wake it for a full batch (hold the backlog's lock)."""
        if self._thread is None:
            if not self._stop:
                self._thread = threading.Thread(
                    target=self._run, name="otel-delivery-store-indexer", daemon=True
                )
                self._thread.start()
        elif urgent or len(self.backlog.rows) >= self.batch_rows:
            self._woken = True
            self.backlog.cond.notify_all()

    def _run(self) -> None:
        cond = self.backlog.cond
        backoff = self.flush_interval_seconds
        failing = False
        while True:
            with cond:
                # A pending flush skips the wait, unless the store just failed: then
                # back off rather than hammer it until the flush times out.
                if not self._stop and not self._woken and (
                        failing or self._flush_requests == self._flushed_through):
                    cond.wait(backoff)
                self._woken = False
                stop = self._stop
                target = self._flush_requests
            if self._upgrade_wanted:
                self._upgrade_wanted = False
                self.backlog.stall()  # an upgrade of a large store takes minutes
                self.connection()
            ok = self._write_pending()
            failing = not ok
            if ok:
                self.upkeep.run()
            with cond:
                if ok:
                    self._flushed_through = target
                    backoff = self.flush_interval_seconds
                else:
                    backoff = min(backoff * 2, 2.0)
                cond.notify_all()
                if stop:
                    return

    def flush(self, timeout_seconds: float, *, closed: bool) -> bool:
        """Wait until everything queued so far is committed; True if it was in time."""
        deadline = time.monotonic() + timeout_seconds
        cond = self.backlog.cond
        with cond:
            if self._thread is None or not self._thread.is_alive():
                if self.backlog.idle():
                    return True
                if closed:
                    return False
                self._thread = None
                self._poke()
            self._flush_requests += 1
            target = self._flush_requests
            cond.notify_all()
            while self._flushed_through < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                cond.wait(remaining)
            return True

    def stop(self, join_seconds: float) -> None:
        with self.backlog.cond:
            self._stop = True
            self.backlog.cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(join_seconds)

    # -- writing batches --------------------------------------------------------------

    def _write_pending(self) -> bool:
        """Commit everything queued; True when the queue and drop counts are empty."""
        while True:
            taken, drops = self.backlog.take(self.batch_rows)
            if not taken and not drops:
                return True
            busy_until = time.monotonic() + _BUSY_GIVE_UP_SECONDS
            try:
                while True:
                    try:
                        held = self._write_locked(taken, drops)
                        break
                    except _StoreBusy:
                        # Another process has the write lock: wait with ours let go.
                        self.backlog.stall()
                        if time.monotonic() >= busy_until:
                            raise sqlite3.OperationalError("database is locked") from None
                        time.sleep(_BUSY_TRY_SECONDS / 2)
            except Exception as exc:
                self.backlog.put_back(taken, drops)
                self._log.warning(
                    "bg", "otel-delivery cannot write to %s (%s); %d rows held for retry",
                    self.store.path, exc, len(taken),
                )
                with self.lock:
                    self.close_connection()
                return False
            self._adapt_batch(len(taken), held)
            self.backlog.journal.done([seg for _, _, seg in taken if seg is not None])
            self.numbers.forget((kind, row) for kind, row, _ in taken)
            more = self.backlog.committed()
            self.upkeep.wrote()
            if more:
                self.upkeep.maybe_checkpoint()
                # Other processes writing the store wait for its lock in SQLite's busy
                # handler, which polls: leave the lock free between batches long enough
                # for a poll to find it, or a busy writer here would starve them.
                time.sleep(min(held, _GAP_SECONDS))

    def _write_locked(self, taken: list[Queued], drops: Drops) -> float:
        """Write one batch holding our lock; return how long it was held."""
        batch = [(kind, row) for kind, row, _ in taken]
        refused: list[str] = []
        if self.conn is None:
            self.backlog.stall()  # opening may wait on another process, or upgrade
        with self.lock:
            started = time.monotonic()
            try:
                self._write_batch(batch, drops, refused)
            except Exception as exc:
                if not _is_row_problem(exc):
                    raise
                # One bad row (a value SQLite cannot bind) must not hold the queue
                # forever: write the rows one by one, counting the bad ones.
                self._write_batch(batch, drops, refused, one_by_one=True)
            held = time.monotonic() - started
        for error in refused:
            self.backlog.count("unwritable_row", 1, error)
        return held

    def _adapt_batch(self, rows: int, held_seconds: float) -> None:
        """Aim the next batch at ``BATCH_HOLD_SECONDS`` of lock time."""
        size = self.batch_rows
        if held_seconds > BATCH_HOLD_SECONDS and rows > MIN_BATCH:
            size = max(MIN_BATCH, int(rows * BATCH_HOLD_SECONDS / held_seconds))
        elif held_seconds < BATCH_HOLD_SECONDS / 2 and rows >= size:
            size = min(BATCH_SIZE, size * 2)
        self.batch_rows = size

    @gated
    def _write_batch(
        self, batch: list[tuple[str, dict[str, Any]]], drops: Drops, refused: list[str],
        *, one_by_one: bool = False,
    ) -> None:
        """Commit ``batch`` and ``drops`` in one transaction; with ``one_by_one``, a row
        SQLite refuses is skipped and described in ``refused``."""
        if self.conn is not None and self.store.replaced(self._identity):
            self.close_connection()
        conn = self.conn if self.conn is not None else self._open(_OPEN_TIMEOUT_SECONDS)
        by_kind: dict[str, list[dict[str, Any]]] = {}
        for kind, row in merge_attempts(batch):
            if kind.startswith("attempts:") and row.get("writer_id") is None:
                row["writer_id"] = self.store.writer_id
            by_kind.setdefault(kind, []).append(row)
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if is_busy(exc):
                raise _StoreBusy() from exc
            raise
        try:
            for kind, rows in by_kind.items():
                if one_by_one:
                    refused += _write_singly(conn, kind, rows)
                else:
                    conn.executemany(KIND_SQL[kind], [row_params(kind, r) for r in rows])
            if drops:
                conn.executemany(
                    DROP_SQL,
                    [(reason, *counts) for reason, counts in drops.items() if counts[0]],
                )
            conn.execute("COMMIT")
        except BaseException:
            try:
                conn.rollback()
            except Exception:
                pass
            raise

    # -- the end ------------------------------------------------------------------------

    def finish(self) -> None:
        """Mark this writer ended in the store (its attempts still open never finished)
        and let go of the connection. After :meth:`stop`."""
        with self.lock, GATE:
            conn = self.conn
            if conn is not None and not self.store.replaced(self._identity) \
                    and self.store.writer_id is not None:
                try:
                    t = now_ms()
                    conn.execute(
                        "UPDATE attempts SET status = 'interrupted', ended_at_ms = ? "
                        "WHERE writer_id = ? AND status = 'started'",
                        (t, self.store.writer_id),
                    )
                    conn.execute(
                        "UPDATE writers SET ended_at_ms = ? WHERE id = ?", (t, self.store.writer_id)
                    )
                    conn.commit()
                except Exception:
                    pass
            self.close_connection()
