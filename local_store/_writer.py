"""Writing rows into the store without ever hurting the caller.

One write path for every row. :meth:`StoreWriter.submit` (an inbound message, an AI
run, an enqueue, a receipt), :meth:`StoreWriter.start_attempt` (an attempt about to
send) and :meth:`StoreWriter.end_attempt` (its outcome) each append the row to this
process's journal (``_journal.py``: one ``write(2)`` of a JSON line, a few
microseconds) on the caller's thread, and queue it (``_backlog.py``); the indexer's
thread (``_indexer.py``) commits the queue in batches. A process killed before that
commit leaves its rows in its journal, and the next writable open of the store commits
them with the same SQL (``_replay.py``, ``_rows.py``). The caller never waits for the
store's write lock.

The pieces, by role: ``_backlog.py`` (the queue, the pacing of a producer that
outruns the store, the drop counts), ``_numbers.py`` (attempt numbers), ``_indexer.py``
(the thread that commits), ``_upkeep.py`` (checkpointing, dead writers' journals,
judging), ``_storefile.py`` (opening the store for writing). This module ties them
together, and gives a forked child fresh ones.

The caller's wait is bounded: reading the next attempt number waits at most
``hot_path_timeout_seconds`` for the store, and pacing at most as long again, so a
call stays within the hot path's 100 ms bound. Nothing raises into the caller. Rows
that cannot be kept (queue full, closed writer, a row SQLite refuses) are counted in
the ``drops`` table by reason; rows that fail to commit stay queued and are retried.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._backlog import Backlog
from ._indexer import Indexer
from ._journal import Journal
from ._numbers import AttemptNumbers
from ._ratelimit import RateLimitedLog
from ._rows import INSERT_SQL, TABLE_COLUMNS
from ._storefile import StoreFile, abandoned_connections, now_ms
from ._values import clean_row

__all__ = ["DEFAULT_MAX_QUEUE", "TABLE_COLUMNS", "StoreWriter"]

_log = logging.getLogger("local_store")

DEFAULT_MAX_QUEUE = 20_000
DEFAULT_FLUSH_INTERVAL_SECONDS = 0.25
DEFAULT_HOT_PATH_TIMEOUT_SECONDS = 0.05

# Writers alive in this process, so a fork can reset every one of them.
_writers: weakref.WeakSet[StoreWriter] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for writer in list(_writers):
        writer._reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _Parts:
    """What a writer is made of in one process; a forked child makes new ones."""

    def __init__(self, writer: StoreWriter) -> None:
        self.pid = os.getpid()
        self.store = StoreFile(writer.path, writer.service, writer._log)
        self.journal = Journal(writer.path)
        self.backlog = Backlog(
            self.journal, writer._log, max_queue=writer.max_queue,
            pace_seconds=writer.hot_path_timeout_seconds,
        )
        self.numbers = AttemptNumbers(self.store, writer.hot_path_timeout_seconds, writer._log)
        self.indexer = Indexer(
            self.store, self.backlog, self.numbers, writer._log,
            flush_interval_seconds=writer.flush_interval_seconds,
        )


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
        self._log = RateLimitedLog(_log)
        self._closed = False
        self._parts = _Parts(self)
        _writers.add(self)
        # Register as a writer of the store at start-up, and log a problem at once.
        # Nothing here raises: a store that cannot be opened, or has an older schema,
        # is left to the indexer, which retries it or upgrades it off this thread.
        self._parts.indexer.open_now(hot_path_timeout_seconds)

    @property
    def writer_id(self) -> int | None:
        """This process's row in the store's ``writers`` table, once registered."""
        return self._parts.store.writer_id

    def _here(self) -> _Parts:
        """This process's parts (fresh ones after a fork on a platform without
        ``os.register_at_fork``)."""
        if self._parts.pid != os.getpid():
            self._reset_after_fork()
        return self._parts

    def _reset_after_fork(self) -> None:
        old = self._parts
        for conn in (old.indexer.conn, *old.numbers.abandon()):
            if conn is not None:
                abandoned_connections.append(conn)
        old.journal.forget_after_fork()
        self._log = RateLimitedLog(_log)  # its lock may have been held by a parent's thread
        # The parent commits what it had queued; the child starts empty.
        self._parts = _Parts(self)

    # -- rows ------------------------------------------------------------------------

    def submit(self, table: str, row: Mapping[str, Any]) -> None:
        """Record a row of ``table`` (``inbound_messages``, ``ai_runs``, ``enqueues``,
        ``receipts``): journaled when this returns, committed by the indexer.

        Never raises and never waits long (see the module docstring). A row of an
        unknown table, or one that is not a mapping, is counted as ``unwritable_row``.
        """
        try:
            parts = self._here()
            if self._closed:
                parts.backlog.count("closed")
                return
            if table not in INSERT_SQL:
                parts.backlog.count("unwritable_row", 1, f"unknown table {table!r}"[:300])
                return
            built = dict(row)
            built.setdefault("service", self.service)
            self._clean(parts, table, built)
            parts.backlog.put(table, built)
        except Exception as exc:
            self._log.warning("submit", "otel-delivery could not record a %s row: %r",
                              table, exc)

    def start_attempt(self, row: Mapping[str, Any]) -> int | None:
        """Record the row of an attempt that is about to send; return its number.

        The row is in the journal when this returns. A row without an ``attempt``
        number gets one more than the delivery's attempts so far: those in the store
        and those of this process not yet committed. Returns None when the number
        could not be known now (the store cannot be read); the insert then derives it.
        Never raises.
        """
        try:
            parts = self._here()
            if self._closed:
                parts.backlog.count("closed")
                return None
            built = dict(row)
            built.setdefault("status", "started")
            built.setdefault("service", self.service)
            self._clean(parts, "attempts", built)
            if built.get("writer_id") is None:
                built["writer_id"] = parts.store.writer_id
            with parts.numbers.lock:
                taken = parts.numbers.number(built)
            # Outside the lock: a paced wait here must not hold up other threads' starts.
            if not parts.backlog.put("attempts:start", built):
                with parts.numbers.lock:
                    parts.numbers.give_back(taken)  # the number goes back unused
                return None
            number = built.get("attempt")
            return number if isinstance(number, int) else None
        except Exception as exc:
            self._log.warning("submit", "otel-delivery could not record an attempt: %r", exc)
            return None

    def end_attempt(self, row: Mapping[str, Any]) -> None:
        """Record an attempt's outcome (or the whole row, if its start was lost):
        journaled when this returns, committed by the indexer. Never raises."""
        try:
            parts = self._here()
            if self._closed:
                parts.backlog.count("closed")
                return
            built = dict(row)
            built.setdefault("service", self.service)
            self._clean(parts, "attempts", built)
            if built.get("writer_id") is None:
                built["writer_id"] = parts.store.writer_id
            parts.backlog.put("attempts:end", built)
        except Exception as exc:
            self._log.warning("submit", "otel-delivery could not record an attempt: %r", exc)

    def count_drop(self, reason: str, n: int = 1, *, error: str | None = None) -> None:
        """Count ``n`` records lost for ``reason`` (with the latest error text, if any).

        Counts are kept in memory (:meth:`stats`) and added to the ``drops`` table by
        the indexer, so they survive while the store is unavailable.
        """
        parts = self._here()
        with parts.backlog.cond:
            parts.backlog.count_locked(reason, n, error)
            if not self._closed:
                parts.backlog.poke(False)

    def _clean(self, parts: _Parts, table: str, row: dict[str, Any]) -> None:
        """Fit ``row``'s values to their columns (``_values.py``), counting each one
        that did not fit: only that value is lost, not the row."""
        problems = clean_row(table, row, now_ms())
        for reason, detail in problems:
            parts.backlog.count(reason, 1, detail)

    def stats(self) -> dict[str, int]:
        """Counters since this writer started.

        Drop reasons (``queue_full``, ``closed``, ``lost_at_close``, ``unwritable_row``,
        and any the caller counts) are records lost; ``unjournaled`` counts rows the
        journal could not take (kept in memory only: committed unless the process dies
        first); ``paced`` counts calls that waited for the indexer because half the
        queue bound was waiting; ``left_in_journal`` counts rows not committed by
        :meth:`close` that stay in the journal for the next writer to commit (not lost);
        ``write_errors`` counts failed batch writes that were kept for retry; ``queued``
        is the queue length now.
        """
        return self._here().backlog.stats()

    # -- flush and close ---------------------------------------------------------------

    def flush(self, timeout_seconds: float = 5.0) -> bool:
        """Commit everything recorded so far. True if it all reached the store in time."""
        return self._here().indexer.flush(timeout_seconds, closed=self._closed)

    def close(self, timeout_seconds: float = 5.0) -> bool:
        """Flush, mark this writer ended, and close. True if nothing was left behind."""
        if self._closed:
            return True
        parts = self._here()
        ok = self.flush(timeout_seconds)
        self._closed = True
        parts.indexer.stop(max(0.0, min(timeout_seconds, 1.0)))
        with parts.backlog.cond:
            waiting = [*parts.backlog.taken, *parts.backlog.rows]
        left = len(waiting)
        unjournaled = sum(1 for _, _, segment in waiting if segment is None)
        if unjournaled:
            parts.backlog.add_total("lost_at_close", unjournaled)
            self._log.warning("close", "otel-delivery closed with %d rows not written to %s",
                              unjournaled, self.path)
        if left - unjournaled:
            parts.backlog.add_total("left_in_journal", left - unjournaled)
            self._log.warning(
                "close", "otel-delivery closed with %d rows not yet in %s; they stay in its "
                "journal for the next writer to commit", left - unjournaled, self.path,
            )
        parts.journal.close(keep_rows=True)
        parts.indexer.finish()
        with parts.numbers.lock:
            parts.numbers.close()
        return ok and left == 0
