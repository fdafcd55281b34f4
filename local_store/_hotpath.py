"""The caller's side of :class:`~local_store.StoreWriter`: opening the store on the
caller's thread, and an attempt's start and outcome rows, journaled or committed
there, within ``hot_path_timeout_seconds``. See ``_writer.py``.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._forkgate import GATE
from ._replay import replay_orphans
from ._rescue import rescue_interrupted
from ._rows import (
    END_SQL,
    START_SQL,
    attempt_params,
)
from ._schema import connect, open_store
from ._writer_base import (
    _CHECKPOINT_EVERY_COMMITS,
    _JOURNALED,
    _STUCK_AFTER_TIMEOUTS,
    _abandoned_connections,
    _gated,
    _is_row_problem,
    _WriterState,
    now_ms,
)
from .exceptions import StoreCorruptError, StoreUpgradeNeededError

__all__ = ["_HotPath"]


class _HotPath(_WriterState):
    """The hot path: what a decorated call pays for."""


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
