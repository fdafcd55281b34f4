"""Rows dated in the future, after the clock that wrote them jumped ahead and back.

Every window (``summary --since 1h``, ``health``) is "from then until now", and prune
deletes what is older than a bound: a row dated a year ahead would stay in every
window, and out of prune's reach, for a year. The writer sets a new row's time back
to its clock when it is more than :data:`~local_store._values.FUTURE_TOLERANCE_MS`
ahead (``_values.py``). Rows already stored that way (written before the clock came
back) are set back to now by :func:`clamp_future_rows` when prune runs (it trusts
the clock to delete by age anyway), and ``health`` fails while any is left
(:func:`count_future_rows`). Opening the store does not rewrite them: a machine whose
clock is behind would otherwise rewrite every row's time. Each row set back is
counted in ``drops`` as ``future_timestamp``: its time was lost.

Only the indexed start times are searched (an index probe each); a row's end time
is set back with its start.
"""

from __future__ import annotations

import sqlite3

from ._rows import DROP_SQL
from ._values import FUTURE_TIMESTAMP, FUTURE_TOLERANCE_MS

__all__ = ["clamp_future_rows", "count_future_rows"]

# (table, the indexed start column): the column every window and prune reads.
_STARTS = (
    ("attempts", "started_at_ms"),
    ("inbound_messages", "received_at_ms"),
    ("ai_runs", "started_at_ms"),
    ("enqueues", "started_at_ms"),
)


def count_future_rows(conn: sqlite3.Connection, now_ms: int) -> int:
    """How many rows are dated more than the tolerance after ``now_ms``."""
    bound = now_ms + FUTURE_TOLERANCE_MS
    return sum(
        conn.execute(f"SELECT COUNT(*) FROM {table} WHERE {start} > ?", (bound,)).fetchone()[0]
        for table, start in _STARTS
    )


def clamp_future_rows(conn: sqlite3.Connection, now_ms: int) -> int:
    """Set every row dated more than the tolerance after ``now_ms`` back to ``now_ms``;
    return how many. Commits its own transaction (none is written if no row is
    ahead); raises ``sqlite3.Error`` if the store is busy or read-only."""
    bound = now_ms + FUTURE_TOLERANCE_MS
    ahead = [
        (table, start)
        for table, start in _STARTS
        if conn.execute(
            f"SELECT 1 FROM {table} WHERE {start} > ? LIMIT 1", (bound,)
        ).fetchone() is not None
    ]
    if not ahead:
        return 0
    if conn.in_transaction:
        raise sqlite3.OperationalError("clamp_future_rows needs a connection outside a transaction")
    total = 0
    last = ""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for table, start in ahead:
            cur = conn.execute(
                f"UPDATE {table} SET {start} = :now, "
                "ended_at_ms = CASE WHEN ended_at_ms > :now THEN :now ELSE ended_at_ms END "
                f"WHERE {start} > :bound",
                {"now": now_ms, "bound": bound},
            )
            if cur.rowcount > 0:
                total += cur.rowcount
                last = f"{cur.rowcount} rows of {table} dated after {bound}; set to {now_ms}"
        if total:
            conn.execute(DROP_SQL, (FUTURE_TIMESTAMP, total, now_ms, now_ms, last))
        conn.execute("COMMIT")
    except BaseException:
        conn.rollback()
        raise
    return total
