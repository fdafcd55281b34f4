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
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import sqlite3
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

import sqlite_utils

from ._forkgate import GATE
from ._journal import Journal
from ._ratelimit import RateLimitedLog
from ._replay import replay_orphans
from ._rescue import rescue_interrupted
from ._rows import (
    DROP_SQL,
    END_SQL,
    INSERT_SQL,
    OUTCOME_COLUMNS,
    START_BATCH_SQL,
    START_SQL,
    TABLE_COLUMNS,
    attempt_params,
)
from ._schema import connect, open_store
from ._values import clean_row
from ._verdicts import refresh_verdicts
from .exceptions import StoreCorruptError, StoreError, StoreUpgradeNeededError

__all__ = ["DEFAULT_MAX_QUEUE", "TABLE_COLUMNS", "StoreWriter"]

_log = logging.getLogger("local_store")

DEFAULT_MAX_QUEUE = 20_000
DEFAULT_FLUSH_INTERVAL_SECONDS = 0.25
DEFAULT_HOT_PATH_TIMEOUT_SECONDS = 0.05
DEFAULT_HOT_PATH_COOLDOWN_SECONDS = 1.0
# Rows per background transaction: the most, the fewest, and the lock time aimed at.
_BATCH_SIZE = 1_000
_MIN_BATCH = 20
_BATCH_HOLD_SECONDS = 0.015
# A hot-path wait that times out while the background thread has held the lock this
# long means it is stuck behind another process: open the circuit, as for a busy store.
_STUCK_AFTER_TIMEOUTS = 4
# Checkpoint the WAL after this many hot-path commits, or this long after a write.
_CHECKPOINT_EVERY_COMMITS = 200
_CHECKPOINT_INTERVAL_SECONDS = 1.0
# The background thread waits for another process's write lock in short tries, with
# our own lock let go in between, so the hot path never queues behind that wait.
_BG_BUSY_TRY_SECONDS = 0.02
_BG_BUSY_GIVE_UP_SECONDS = 5.0
# How often the background thread looks for journals left by dead processes.
_ORPHAN_CHECK_SECONDS = 1.0
# How often the background thread judges the traces waiting for a verdict
# (``_verdicts.py``), how many per transaction, and for how long at most per turn.
_JUDGE_EVERY_SECONDS = 1.0
_JUDGE_BATCH = 200
_JUDGE_TURN_SECONDS = 0.1
# The key under which a queued row carries the journal segment that holds it.
_JOURNALED = "\0journal"


class _StoreBusy(Exception):
    """Another process holds the write lock; the batch was not started."""


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    """True for SQLITE_BUSY: another connection holds the write lock."""
    code = getattr(exc, "sqlite_errorcode", None)  # None before Python 3.11
    return code & 0xFF == 5 if isinstance(code, int) else "locked" in str(exc)


def _is_row_problem(exc: BaseException) -> bool:
    """True when a write failed because of the row itself, not the store."""
    if isinstance(exc, StoreError):
        return False
    return isinstance(
        exc,
        (OverflowError, TypeError, ValueError, sqlite3.InterfaceError,
         sqlite3.IntegrityError, sqlite3.ProgrammingError),
    )


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _merge_attempts(
    batch: list[tuple[str, dict[str, Any]]],
) -> list[tuple[str, dict[str, Any]]]:
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
            merged.pop(_JOURNALED, None)
            out[i] = ("attempts:end", merged)
            continue
        out.append((kind, row))
    return out


# A queued row: built, or a function the background thread calls to build it.
_Row = dict[str, Any] | Callable[[], Mapping[str, Any]]

# Writers alive in this process, so a fork can reset every one of them.
_writers: weakref.WeakSet[StoreWriter] = weakref.WeakSet()
# Connections that must never be closed: inherited across a fork (the parent still
# uses the file), or open on a store file that was deleted or replaced. Closing the
# last connection to a WAL database checkpoints it and unlinks "<path>-wal" by name,
# which could be the WAL of the parent's, or of the new, store. Keeping them
# referenced here stops the garbage collector from closing them; both events are rare.
_abandoned_connections: list[sqlite3.Connection] = []


_F = TypeVar("_F", bound=Callable[..., Any])


def _gated(method: _F) -> _F:
    """Run ``method`` inside the fork gate (``_forkgate.py``): it calls SQLite. Taken
    after any of our locks, never before one, so a fork never waits on a lock."""

    @functools.wraps(method)
    def inside(*args: Any, **kwargs: Any) -> Any:
        with GATE:
            return method(*args, **kwargs)

    return cast(_F, inside)


def _after_fork_in_child() -> None:
    for writer in list(_writers):
        writer._reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class StoreWriter:
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

    # -- connections ---------------------------------------------------------------

    @_gated
    def _open(
        self, timeout_seconds: float, *, upgrade: bool = True
    ) -> tuple[sqlite3.Connection, tuple[int, int]]:
        try:
            db = open_store(self.path, create=True, busy_timeout_seconds=timeout_seconds,
                            upgrade=upgrade)
        except StoreCorruptError as exc:
            if not exc.damaged:
                raise
            self._move_aside(exc)
            db = open_store(self.path, create=True, busy_timeout_seconds=timeout_seconds,
                            upgrade=upgrade)
        st = os.stat(self.path)
        identity = (st.st_dev, st.st_ino)
        conn = db.conn
        # The background thread checkpoints (see the module docstring).
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        if identity != self._registered_in:
            # A new file (first open, or the old one was deleted or moved aside):
            # this process registers as a writer of it, and rescues its orphans.
            cur = conn.execute(
                "INSERT INTO writers (pid, host, service, started_at_ms) VALUES (?, ?, ?, ?)",
                (os.getpid(), socket.gethostname(), self.service, now_ms()),
            )
            self.writer_id = cur.lastrowid
            self._registered_in = identity
            conn.commit()
            # Outcomes a dead writer left in its journal first, so that only attempts
            # that really never ended are marked interrupted.
            try:
                replay_orphans(conn, self.path)
            except sqlite3.OperationalError as exc:
                self._log.warning("replay", "otel-delivery could not replay journals of %s "
                                  "(%s)", self.path, exc)
            rescue_interrupted(conn)
        return conn, identity

    def _move_aside(self, exc: StoreCorruptError) -> None:
        """Keep a damaged store for forensics under a new name, so a fresh one can start."""
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{os.getpid()}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                os.replace(src, Path(f"{aside}{suffix}"))
        self._log.warning(
            "corrupt", "otel-delivery store %s was damaged (%s); moved it to %s and started "
            "a new one", self.path, exc, aside,
        )
        self.count_drop("store_moved_aside", error=f"damaged store moved to {aside}")

    def _file_replaced(self, identity: tuple[int, int] | None) -> bool:
        """True when the path no longer names the file we have open (deleted, moved)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return True
        return identity != (st.st_dev, st.st_ino)

    def _hot_connection(self) -> sqlite3.Connection | None:
        """The caller-thread connection, or None while the circuit is open."""
        if self._hot_conn is not None and self._file_replaced(self._hot_identity):
            # The store was deleted or moved: a commit now would go to an unlinked
            # file and be lost without a trace. One stat per write prevents that.
            self._release(self._hot_conn, self._hot_identity)
            self._hot_conn = None
        if self._hot_conn is None:
            try:
                # Never upgrade here: on a large store that takes minutes. The
                # background thread does it while these rows wait in the queue.
                self._hot_conn, self._hot_identity = self._open(
                    self.hot_path_timeout_seconds, upgrade=False
                )
            except Exception as exc:
                self._trip(exc)
                if isinstance(exc, StoreUpgradeNeededError):
                    self._upgrade_wanted = True
                    self._wake_background()
                return None
        return self._hot_conn

    def _trip(self, exc: BaseException) -> None:
        self._hot_open_until = time.monotonic() + self.hot_path_cooldown_seconds
        self._log.warning(
            "hot", "otel-delivery store %s unavailable on the hot path (%s); "
            "rows go to the background queue", self.path, exc,
        )
        conn, self._hot_conn = self._hot_conn, None
        self._release(conn, self._hot_identity)

    @_gated
    def _release(self, conn: sqlite3.Connection | None, identity: tuple[int, int] | None) -> None:
        """Close ``conn``, unless its file is no longer at our path (see above)."""
        if conn is None:
            return
        if self._file_replaced(identity):
            _abandoned_connections.append(conn)
            return
        try:
            conn.rollback()
            conn.close()
        except Exception:  # the connection is already broken; nothing to keep
            pass

    # -- attempt rows: journaled, or committed here --------------------------------

    def start_attempt(self, row: Mapping[str, Any]) -> int | None:
        """Record the row of an attempt that is about to send; return its number.

        The row is in the journal when this returns, or committed: with
        ``journal=False``, when the journal cannot be written, or while the queue is
        backlogged (see :meth:`_backlogged`). A row without an ``attempt`` number
        gets one more than the delivery's attempts so far: those in the store and
        those of this process not yet committed. Returns None when the number could
        not be known now (the store is unavailable); it is then derived when the row
        is written.
        """
        row = dict(row)
        row.setdefault("status", "started")
        self._clean("attempts", row)
        if self.journal and not self._closed:
            if os.getpid() != self._pid:
                self._reset_after_fork()
            row.setdefault("service", self.service)
            with self._number_lock:
                if self._journal_start(row):
                    number = row.get("attempt")
                    return number if isinstance(number, int) else None
                # Committed here instead, with the number the journal would have had;
                # under the number lock, so no other start of it takes that number.
                written = self._sync_attempt(START_SQL, row, returning=True)
                number = row.get("attempt") if written is None else written
                return number if isinstance(number, int) else None
        return self._sync_attempt(START_SQL, row, returning=True)

    def _backlogged(self) -> bool:
        """Half the queue bound is waiting for the background thread: attempt rows are
        committed on the caller's thread until it catches up, which paces the caller to
        what the store can take rather than letting the queue fill and drop rows."""
        return len(self._queue) + self._in_flight >= self.max_queue // 2

    def _journal_start(self, row: dict[str, Any]) -> bool:
        """Number ``row`` if need be and journal it (holding ``_number_lock``)."""
        found = row.get("delivery_id")
        delivery_id = found if isinstance(found, str) else None
        if row.get("attempt") is None and delivery_id is not None:
            row["attempt"] = self._next_number(delivery_id)
        if self._backlogged():
            return False
        number = row.get("attempt")
        tracked: str | None = None  # the delivery whose pending number this row raised
        before = None
        if delivery_id is not None and isinstance(number, int):
            before = self._pending_numbers.get(delivery_id)
            if number > (before or 0):
                self._pending_numbers[delivery_id] = number
                tracked = delivery_id
        queued = self._journal_and_queue("attempts:start", row)
        if queued is not True and tracked is not None:
            # Not journaled (the synchronous path numbers it), or dropped: the number
            # goes back unused.
            if before is None:
                del self._pending_numbers[tracked]
            else:
                self._pending_numbers[tracked] = before
        return queued is not None

    @_gated
    def _next_number(self, delivery_id: str) -> int | None:
        """One more than the delivery's highest attempt, committed or pending here."""
        # Pending first: a row committed (and forgotten here) between the two reads is
        # then seen by the read of the store.
        pending = self._pending_numbers.get(delivery_id, 0)
        try:
            conn = self._read_connection()
            (stored,) = conn.execute(
                "SELECT COALESCE(MAX(attempt), 0) FROM attempts WHERE delivery_id = ?",
                (delivery_id,),
            ).fetchone()
        except Exception as exc:
            self._log.warning("read", "otel-delivery cannot read attempt numbers from %s "
                              "(%s)", self.path, exc)
            self._close_read()
            return None
        return max(pending, int(stored)) + 1

    def _read_connection(self) -> sqlite3.Connection:
        # Whether the store file was replaced is checked once a second, not per read:
        # a stale number in that second is the worst it can do (nothing is written here).
        now = time.monotonic()
        if self._read_conn is not None and now >= self._read_checked + 1.0:
            self._read_checked = now
            if self._file_replaced(self._read_identity):
                self._close_read()
        if self._read_conn is None:
            st = os.stat(self.path)
            self._read_conn = connect(self.path, busy_timeout_seconds=self.hot_path_timeout_seconds)
            self._read_identity = (st.st_dev, st.st_ino)
            self._read_checked = now
        return self._read_conn

    def _close_read(self) -> None:
        conn, self._read_conn = self._read_conn, None
        self._release(conn, self._read_identity)

    def _forget_numbers(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        """Committed start rows: their numbers are now read from the store."""
        with self._number_lock:
            for kind, row in batch:
                delivery_id = row.get("delivery_id")
                if (kind == "attempts:start" and isinstance(delivery_id, str)
                        and row.get("attempt") is not None
                        and self._pending_numbers.get(delivery_id) == row.get("attempt")):
                    del self._pending_numbers[delivery_id]

    def end_attempt(self, row: Mapping[str, Any]) -> None:
        """Record an attempt's outcome (or the whole row, if its start was lost).

        Like :meth:`start_attempt`: journaled and committed by the background thread,
        or committed here with ``journal=False``, when the journal cannot be written, or
        while the queue is backlogged.
        """
        row = dict(row)
        if self._closed:
            self.count_drop("closed")
            return
        if os.getpid() != self._pid:
            self._reset_after_fork()
        row.setdefault("service", self.service)
        self._clean("attempts", row)
        if self._backlogged() or self._journal_and_queue("attempts:end", row) is None:
            self._sync_attempt(END_SQL, row, returning=False)

    def _sync_attempt(self, sql: str, row: dict[str, Any], *, returning: bool) -> int | None:
        if self._closed:
            self.count_drop("closed")
            return None
        if os.getpid() != self._pid:  # fork without register_at_fork (rare platforms)
            self._reset_after_fork()
        row.setdefault("service", self.service)
        if time.monotonic() >= self._hot_open_until:
            try:
                written, number = self._write_now(sql, row, returning=returning)
                if written:
                    return number
            except Exception as exc:
                self._log.warning("hot-unexpected", "otel-delivery hot path failed: %r", exc)
        with self._cond:
            self._totals["deferred"] = self._totals.get("deferred", 0) + 1
        kind = "attempts:start" if returning else "attempts:end"
        if self._journal_and_queue(kind, row) is None:
            self._enqueue(kind, row)
        return None

    def _journal_and_queue(self, kind: str, row: dict[str, Any]) -> bool | None:
        """Append an attempt row to the journal and queue it: True when queued, False
        when the full queue dropped it, None when there is no journal to take it (with
        ``journal=False``, or it cannot be written; nothing is queued then)."""
        if not self.journal:
            return None
        if row.get("writer_id") is None:
            row["writer_id"] = self.writer_id
        segment = self._journal.append(kind, row)
        if segment is None:
            return None
        row[_JOURNALED] = segment
        return self._enqueue(kind, row)

    def _write_now(
        self, sql: str, row: dict[str, Any], *, returning: bool
    ) -> tuple[bool, int | None]:
        """Commit one attempt row within the hot-path bound: (written, attempt number)."""
        asked = time.monotonic()
        if not self._lock.acquire(timeout=self.hot_path_timeout_seconds):
            held_since = self._bg_lock_since
            stuck = max(self.hot_path_timeout_seconds, 0.01) * _STUCK_AFTER_TIMEOUTS
            if held_since and time.monotonic() - held_since >= stuck:
                # The background writer has held the lock far past a batch's time, so
                # it is waiting on another process: skip the wait for a while rather
                # than pay it every call. A batch that merely ran long defers one row.
                self._hot_open_until = time.monotonic() + self.hot_path_cooldown_seconds
            return False, None
        GATE.__enter__()
        try:
            conn = self._hot_connection()
            if conn is None:
                return False, None
            row["writer_id"] = self.writer_id
            # Time spent waiting for our own lock comes off SQLite's wait for another
            # process's, so the call as a whole stays within the bound.
            waited = time.monotonic() - asked
            shortened = waited > 0.001
            try:
                if shortened:
                    left = max(1, int((self.hot_path_timeout_seconds - waited) * 1000))
                    conn.execute(f"PRAGMA busy_timeout = {left}")
                cur = conn.execute(sql, attempt_params(row))
                result = cur.fetchone() if returning else None
                conn.commit()
                self._hot_commits += 1
                self._judging_wanted = True
            except Exception as exc:
                if _is_row_problem(exc):
                    conn.rollback()
                    with self._cond:
                        self._count_locked("unwritable_row", 1, f"attempts: {exc!r}"[:300])
                    return True, None  # the store is fine; this row can never be written
                self._trip(exc)
                return False, None
            finally:
                if shortened and self._hot_conn is conn:
                    try:
                        conn.execute(
                            f"PRAGMA busy_timeout = {int(self.hot_path_timeout_seconds * 1000)}"
                        )
                    except Exception:  # a broken connection is replaced on the next call
                        pass
            return True, int(result[0]) if result is not None else row.get("attempt")
        finally:
            GATE.__exit__(None, None, None)
            self._lock.release()
            if self._hot_commits >= _CHECKPOINT_EVERY_COMMITS:
                self._wake_background()

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

    # -- background thread -----------------------------------------------------------

    def _start_thread(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name="otel-delivery-store-writer", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        backoff = self.flush_interval_seconds
        failing = False
        while True:
            with self._cond:
                # A pending flush skips the wait, unless the store just failed: then
                # back off rather than hammer it until the flush times out.
                if not self._stop and (failing or self._flush_requests == self._flushed_through):
                    self._cond.wait(backoff)
                stop = self._stop
                target = self._flush_requests
            if self._upgrade_wanted:
                self._upgrade_wanted = False
                self._bg_connection()
            ok = self._write_pending()
            failing = not ok
            if ok:
                self._maybe_checkpoint()
                self._maybe_replay_orphans()
                self._maybe_judge()
            with self._cond:
                if ok:
                    self._flushed_through = target
                    backoff = self.flush_interval_seconds
                else:
                    backoff = min(backoff * 2, 2.0)
                self._cond.notify_all()
                if stop:
                    return

    def _write_pending(self) -> bool:
        """Write everything queued; True when the queue and drop counts are empty."""
        while True:
            with self._cond:
                n = min(self._batch_rows, len(self._queue))
                taken = [self._queue.popleft() for _ in range(n)]
                self._in_flight = len(taken)
                drops = self._pending_drops
                self._pending_drops = {}
            if not taken and not drops:
                return True
            batch = self._build_rows(taken)
            busy_until = time.monotonic() + _BG_BUSY_GIVE_UP_SECONDS
            try:
                while True:
                    try:
                        held = self._write_locked(batch, drops)
                        break
                    except _StoreBusy:
                        # Another process has the write lock: wait with ours let go.
                        if time.monotonic() >= busy_until:
                            raise sqlite3.OperationalError("database is locked") from None
                        time.sleep(_BG_BUSY_TRY_SECONDS / 2)
                self._adapt_batch(len(batch), held)
                self._journal.done(
                    [row.pop(_JOURNALED) for _, row in batch if _JOURNALED in row]
                )
                self._forget_numbers(batch)
                with self._cond:
                    self._in_flight = 0
                    self._bg_commits += 1
                    more = bool(self._queue)
                self._judging_wanted = True
                if more:
                    self._maybe_checkpoint()
                    # Let a waiting hot-path call take the lock between batches.
                    time.sleep(0.0005)
            except Exception as exc:
                with self._cond:
                    self._in_flight = 0
                    # Put the rows back in order; counts merge with any new ones.
                    self._queue.extendleft(reversed(batch))
                    for reason, (count, first, last, err) in drops.items():
                        cur = self._pending_drops.get(reason)
                        if cur is None:
                            self._pending_drops[reason] = [count, first, last, err]
                        else:
                            cur[0] += count
                            cur[1] = min(cur[1], first)
                    self._totals["write_errors"] = self._totals.get("write_errors", 0) + 1
                self._log.warning(
                    "bg", "otel-delivery cannot write to %s (%s); %d rows held for retry",
                    self.path, exc, len(batch),
                )
                self._close_bg()
                return False

    def _write_locked(
        self, batch: list[tuple[str, dict[str, Any]]], drops: dict[str, list[Any]]
    ) -> float:
        """Write one batch holding our lock; return how long it was held."""
        with self._lock:
            self._bg_lock_since = started = time.monotonic()
            try:
                try:
                    self._write_batch(batch, drops)
                except Exception as exc:
                    if not _is_row_problem(exc):
                        raise
                    # One bad row (a value SQLite cannot bind) must not hold the queue
                    # forever: write the rows one by one, counting the bad ones.
                    self._write_batch(batch, drops, one_by_one=True)
            finally:
                self._bg_lock_since = 0.0
            return time.monotonic() - started

    def _build_rows(
        self, taken: list[tuple[str, _Row]]
    ) -> list[tuple[str, dict[str, Any]]]:
        """Call the builders of lazy rows (outside the lock); count the ones that fail."""
        batch: list[tuple[str, dict[str, Any]]] = []
        for kind, row in taken:
            if callable(row):
                try:
                    made = row()
                    built = made if type(made) is dict else dict(made)
                except Exception as exc:
                    with self._cond:
                        self._count_locked("unbuildable_row", 1, f"{kind}: {exc!r}"[:300])
                    continue
                built.setdefault("service", self.service)
                self._clean(kind, built)
                batch.append((kind, built))
            else:
                batch.append((kind, row))
        return batch

    def _adapt_batch(self, rows: int, held_seconds: float) -> None:
        """Aim the next batch at ``_BATCH_HOLD_SECONDS`` of lock time."""
        size = self._batch_rows
        if held_seconds > _BATCH_HOLD_SECONDS and rows > _MIN_BATCH:
            size = max(_MIN_BATCH, int(rows * _BATCH_HOLD_SECONDS / held_seconds))
        elif held_seconds < _BATCH_HOLD_SECONDS / 2 and rows >= size:
            size = min(_BATCH_SIZE, size * 2)
        self._batch_rows = size

    def _maybe_checkpoint(self) -> None:
        """Copy the WAL into the database now and then, on this (background) thread."""
        with self._cond:
            elapsed = time.monotonic() - self._last_checkpoint
            written = self._hot_commits + self._bg_commits
            if not (self._hot_commits >= _CHECKPOINT_EVERY_COMMITS
                    or (written and elapsed >= _CHECKPOINT_INTERVAL_SECONDS)):
                return
            self._hot_commits = self._bg_commits = 0
            self._last_checkpoint = time.monotonic()
        try:
            conn = self._bg_connection()
            if conn is None:
                return
            # PASSIVE copies what it can without waiting for readers or writers...
            with GATE:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            # ...but SQLite starts the WAL over only if no frame is left when the next
            # write begins, and this process's writes race the copy. Copy the few
            # written meanwhile with our writes held off (fsync here takes well under
            # a millisecond), or the WAL file would grow for as long as traffic lasts.
            if self._lock.acquire(timeout=self.hot_path_timeout_seconds):
                try:
                    with GATE:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                finally:
                    self._lock.release()
        except Exception as exc:
            self._log.warning("checkpoint", "otel-delivery could not checkpoint %s (%s)",
                              self.path, exc)

    def _maybe_replay_orphans(self) -> None:
        """Now and then, commit the journals of writers that died (another worker of a
        multi-process gateway, say); ``open_store`` does it at every open."""
        if time.monotonic() < self._next_orphan_check:
            return
        self._next_orphan_check = time.monotonic() + _ORPHAN_CHECK_SECONDS
        try:
            conn = self._bg_connection()
            if conn is None:
                return
            with self._lock, GATE:
                replay_orphans(conn, self.path)
        except Exception as exc:
            self._log.warning("replay", "otel-delivery could not replay journals of %s (%s)",
                              self.path, exc)

    def _maybe_judge(self) -> None:
        """Now and then, after this process has written, judge the traces waiting for
        a verdict, so ``undelivered`` finds them kept (``_verdicts.py``): a few hundred
        per transaction, our lock let go between transactions, for at most
        ``_JUDGE_TURN_SECONDS`` a turn. An idle writer's thread makes no SQLite call for
        it (a thread inside SQLite while the process forks is what a forked child must
        never inherit)."""
        if not self._judging_wanted or time.monotonic() < self._next_judging:
            return
        self._next_judging = time.monotonic() + _JUDGE_EVERY_SECONDS
        self._judging_wanted = False
        turn_ends = time.monotonic() + _JUDGE_TURN_SECONDS
        try:
            conn = self._bg_connection()
            if conn is None:
                self._judging_wanted = True
                return
            with GATE:
                db = sqlite_utils.Database(conn, execute_plugins=False)
            while True:
                taken = self._judge_some(conn, db)
                if taken is None or (taken == _JUDGE_BATCH and time.monotonic() >= turn_ends):
                    self._judging_wanted = True  # busy, or more left: the next turn
                    return
                if taken < _JUDGE_BATCH:
                    return
                time.sleep(0.0005)  # let a waiting hot-path call take the lock
        except Exception as exc:
            self._judging_wanted = True
            self._log.warning("judge", "otel-delivery could not judge undelivered replies "
                              "in %s (%s)", self.path, exc)

    def _judge_some(self, conn: sqlite3.Connection, db: sqlite_utils.Database) -> int | None:
        """One transaction of :meth:`_maybe_judge`: how many traces it judged (0 when
        none waits, looked at without the write lock), or None when another process is
        writing."""
        with GATE:
            if conn.execute("SELECT 1 FROM traces_to_judge LIMIT 1").fetchone() is None:
                return 0
        with self._lock, GATE:
            self._bg_lock_since = time.monotonic()
            try:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError as exc:
                    if _is_busy(exc):
                        return None
                    raise
                try:
                    taken = refresh_verdicts(db, limit=_JUDGE_BATCH)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.rollback()
                    raise
            finally:
                self._bg_lock_since = 0.0
        if taken:
            with self._cond:
                self._bg_commits += 1
        return taken

    @_gated
    def _write_batch(
        self,
        batch: list[tuple[str, dict[str, Any]]],
        drops: dict[str, list[Any]],
        *,
        one_by_one: bool = False,
    ) -> None:
        if self._bg_conn is not None and self._file_replaced(self._bg_identity):
            self._close_bg()
        conn = self._bg_conn if self._bg_conn is not None else self._open_bg()
        by_kind: dict[str, list[dict[str, Any]]] = {}
        for kind, row in _merge_attempts(batch):
            if kind.startswith("attempts:") and row.get("writer_id") is None:
                row["writer_id"] = self.writer_id
            by_kind.setdefault(kind, []).append(row)
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                raise _StoreBusy() from exc
            raise
        try:
            if one_by_one:
                self._write_rows_singly(conn, by_kind)
                by_kind = {}
            for kind, rows in by_kind.items():
                if kind == "attempts:start":
                    conn.executemany(START_BATCH_SQL, [attempt_params(r) for r in rows])
                elif kind == "attempts:end":
                    conn.executemany(END_SQL, [attempt_params(r) for r in rows])
                else:
                    cols = TABLE_COLUMNS[kind]
                    conn.executemany(INSERT_SQL[kind], [[r.get(c) for c in cols] for r in rows])
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

    def _write_rows_singly(
        self, conn: sqlite3.Connection, by_kind: dict[str, list[dict[str, Any]]]
    ) -> None:
        for kind, rows in by_kind.items():
            for row in rows:
                if kind.startswith("attempts:"):
                    sql = START_BATCH_SQL if kind == "attempts:start" else END_SQL
                    params: Any = attempt_params(row)
                else:
                    sql, params = INSERT_SQL[kind], tuple(row.get(c) for c in TABLE_COLUMNS[kind])
                try:
                    conn.execute(sql, params)
                except Exception as exc:
                    if not _is_row_problem(exc):
                        raise
                    with self._cond:
                        self._count_locked("unwritable_row", 1, f"{kind}: {exc!r}"[:300])

    def _bg_connection(self) -> sqlite3.Connection | None:
        """The background connection, opened (creating or upgrading the store) if need be."""
        conn = self._bg_conn
        if conn is not None and not self._file_replaced(self._bg_identity):
            return conn
        with self._lock:
            # Opening may wait on another process, or upgrade a large store for
            # minutes: let the hot path see that the lock is taken for long.
            self._bg_lock_since = time.monotonic()
            try:
                if self._bg_conn is not None:
                    self._close_bg()
                return self._open_bg()
            except Exception as exc:
                self._log.warning("bg-open", "otel-delivery cannot open %s (%s)", self.path, exc)
                return None
            finally:
                self._bg_lock_since = 0.0

    @_gated
    def _open_bg(self) -> sqlite3.Connection:
        # Opening (and migrating) may wait up to 5 s; later writes wait in short tries.
        conn, self._bg_identity = self._open(5.0)
        conn.execute(f"PRAGMA busy_timeout = {int(_BG_BUSY_TRY_SECONDS * 1000)}")
        self._bg_conn = conn
        return conn

    def _close_bg(self) -> None:
        conn, self._bg_conn = self._bg_conn, None
        self._release(conn, self._bg_identity)

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
