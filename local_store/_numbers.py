"""Attempt numbers for start rows that come without one.

A start row without an ``attempt`` gets one more than the delivery's attempts so far:
those in the store (read through a read-only-use connection of its own) and those
this process has queued but the indexer has not committed yet. A number is noted as
pending under :attr:`AttemptNumbers.lock` as it is handed out, so two starts of one
delivery never take the same one.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable
from typing import Any

from ._ids import pack
from ._ratelimit import RateLimitedLog
from ._schema import connect
from ._storefile import FileIdentity, StoreFile, gated

__all__ = ["AttemptNumbers"]

# How often the read connection checks that its file is still the store.
_RECHECK_SECONDS = 1.0


class AttemptNumbers:
    """The numbers handed out in this process and not yet committed, by delivery."""

    def __init__(self, store: StoreFile, timeout_seconds: float, log: RateLimitedLog) -> None:
        self.lock = threading.Lock()
        self._store = store
        self._timeout_seconds = timeout_seconds
        self._log = log
        self._pending: dict[str, int] = {}
        self._conn: sqlite3.Connection | None = None
        self._identity: FileIdentity | None = None
        self._checked = 0.0  # monotonic time the connection's file was last checked

    def number(self, row: dict[str, Any]) -> tuple[str, int, int | None] | None:
        """Give ``row`` its number if it has none, and note it as pending (hold
        :attr:`lock`). Returns what :meth:`give_back` needs to undo that, or None."""
        found = row.get("delivery_id")
        delivery_id = found if isinstance(found, str) else None
        if delivery_id is None:
            return None
        if row.get("attempt") is None:
            row["attempt"] = self._next(delivery_id)
        number = row.get("attempt")
        before = self._pending.get(delivery_id)
        if isinstance(number, int) and number > (before or 0):
            self._pending[delivery_id] = number
            return delivery_id, number, before
        return None

    def give_back(self, taken: tuple[str, int, int | None] | None) -> None:
        """Undo :meth:`number` for a row that was not kept, unless a later start of the
        delivery took a higher number meanwhile (hold :attr:`lock`)."""
        if taken is None:
            return
        delivery_id, number, before = taken
        if self._pending.get(delivery_id) != number:
            return
        if before is None:
            del self._pending[delivery_id]
        else:
            self._pending[delivery_id] = before

    def forget(self, rows: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """Committed start rows: their numbers are now read from the store."""
        with self.lock:
            for kind, row in rows:
                delivery_id = row.get("delivery_id")
                if (kind == "attempts:start" and isinstance(delivery_id, str)
                        and row.get("attempt") is not None
                        and self._pending.get(delivery_id) == row.get("attempt")):
                    del self._pending[delivery_id]

    @gated
    def _next(self, delivery_id: str) -> int | None:
        """One more than the delivery's highest attempt, committed or pending here;
        None when the store cannot be read now (the insert then derives it)."""
        # Pending first: a row committed (and forgotten here) between the two reads is
        # then seen by the read of the store.
        pending = self._pending.get(delivery_id, 0)
        try:
            (stored,) = self._connection().execute(
                "SELECT COALESCE(MAX(attempt), 0) FROM attempts WHERE delivery_id = ?",
                (pack(delivery_id),),
            ).fetchone()
        except Exception as exc:
            self._log.warning("read", "otel-delivery cannot read attempt numbers from %s "
                              "(%s)", self._store.path, exc)
            self.close()
            return None
        return max(pending, int(stored)) + 1

    def _connection(self) -> sqlite3.Connection:
        # Whether the store file was replaced is checked once a second, not per read:
        # a stale number in that second is the worst it can do (nothing is written here).
        now = time.monotonic()
        if self._conn is not None and now >= self._checked + _RECHECK_SECONDS:
            self._checked = now
            if self._store.replaced(self._identity):
                self.close()
        if self._conn is None:
            st = self._store.path.stat()
            self._conn = connect(self._store.path, busy_timeout_seconds=self._timeout_seconds)
            self._identity = (st.st_dev, st.st_ino)
            self._checked = now
        return self._conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        self._store.release(conn, self._identity)

    def abandon(self) -> list[sqlite3.Connection]:
        """The connection, for a forked child to keep unclosed (see ``_storefile``)."""
        return [self._conn] if self._conn is not None else []
