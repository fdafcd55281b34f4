"""The background side of :class:`~local_store.StoreWriter`: the daemon thread that
commits the queued rows in batches sized by lock time, checkpoints the WAL, replays
dead writers' journals and judges the queued traces. See ``_writer.py``.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import Any

import sqlite_utils

from ._forkgate import GATE
from ._hotpath import _HotPath
from ._replay import replay_orphans
from ._rows import (
    DROP_SQL,
    END_SQL,
    INSERT_SQL,
    START_BATCH_SQL,
    TABLE_COLUMNS,
    attempt_params,
)
from ._verdicts import refresh_verdicts
from ._writer_base import (
    _BATCH_HOLD_SECONDS,
    _BATCH_SIZE,
    _BG_BUSY_GIVE_UP_SECONDS,
    _BG_BUSY_TRY_SECONDS,
    _CHECKPOINT_EVERY_COMMITS,
    _CHECKPOINT_INTERVAL_SECONDS,
    _JOURNALED,
    _JUDGE_BATCH,
    _JUDGE_EVERY_SECONDS,
    _JUDGE_TURN_SECONDS,
    _MIN_BATCH,
    _ORPHAN_CHECK_SECONDS,
    _gated,
    _is_busy,
    _is_row_problem,
    _merge_attempts,
    _Row,
    _StoreBusy,
)

__all__ = ["_Indexer"]


class _Indexer(_HotPath):
    """The background indexer: queued rows into the store."""


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
