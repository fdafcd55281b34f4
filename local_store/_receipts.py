"""Receipts: what the platform said about a message after its API accepted it.

A send that returns OK only means the platform took the message. WhatsApp's Cloud API
(and Signal, iMessage bridges, Matrix) report later that it was ``sent``,
``delivered``, ``read`` or ``failed``. Each such status is one row of ``receipts``,
joined to the attempt that sent the message by ``(channel, provider_message_id)``
when read, so a receipt that arrives before its attempt's row still joins once the
row is there. Recording is idempotent: the same status of the same message at the
same time is one row, however often the webhook is retried.

A message's receipt *now* is its latest one: by time, then by
:data:`STATUS_RANK` (a ``failed`` after ``delivered`` is a failure after acceptance;
a ``read`` that arrives before its ``delivered`` is still read).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from ._forkgate import GATE
from ._ids import hex_sql
from ._reading import rows

__all__ = [
    "RECEIPTS_SQL",
    "RECEIPTS_VIEW_SQL",
    "RECEIPT_STATUSES",
    "AttemptFinder",
    "ReceiptRates",
    "failed_after_accept",
    "receipt_rates",
    "receipts_of_traces",
    "unmatched_receipts",
]

RECEIPT_STATUSES = ("sent", "delivered", "read", "failed")
_RANK_SQL = (
    "CASE {r}.status WHEN 'failed' THEN 4 WHEN 'read' THEN 3 WHEN 'delivered' THEN 2 "
    "WHEN 'sent' THEN 1 ELSE 0 END"
)

RECEIPTS_SQL = """
CREATE TABLE IF NOT EXISTS receipts (
    id INTEGER PRIMARY KEY,
    channel TEXT NOT NULL,
    provider_message_id TEXT NOT NULL,
    status TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    recipient TEXT,
    error_type TEXT,
    error_text TEXT,
    trace_id TEXT,
    span_id TEXT,
    attempt_span_id TEXT,
    recorded_at_ms INTEGER,
    service TEXT,
    UNIQUE (channel, provider_message_id, status, at_ms)
);
CREATE INDEX IF NOT EXISTS idx_receipts_at ON receipts (at_ms);
CREATE INDEX IF NOT EXISTS idx_attempts_provider_message
    ON attempts (channel, provider_message_id) WHERE provider_message_id IS NOT NULL;
"""

# Receipts with the attempt each belongs to; ids as hex (_ids.py).
RECEIPTS_VIEW_SQL = f"""
CREATE VIEW v_receipts AS
SELECT r.id, r.channel, r.provider_message_id, r.status,
    strftime('%Y-%m-%dT%H:%M:%fZ', r.at_ms / 1000.0, 'unixepoch') AS at,
    r.recipient, r.error_type, r.error_text,
    {hex_sql("a.delivery_id")} AS delivery_id, a.attempt, {hex_sql("a.trace_id")} AS trace_id,
    a.inbound_id, a.id IS NOT NULL AS matched
FROM receipts r LEFT JOIN attempts a ON a.id = (
    SELECT x.id FROM attempts x WHERE x.channel = r.channel
      AND x.provider_message_id = r.provider_message_id
    ORDER BY x.status = 'delivered' DESC, x.id DESC LIMIT 1);
"""


# The latest receipt of each message among the receipts ``{source}`` selects (as r).
_LATEST = f"""SELECT * FROM (
    SELECT r.*, ROW_NUMBER() OVER (
        PARTITION BY r.channel, r.provider_message_id
        ORDER BY r.at_ms DESC, {_RANK_SQL.format(r="r")} DESC, r.id DESC) AS nth
    FROM {{source}}) WHERE nth = 1"""

# The attempt a receipt belongs to: the one that sent the message (its id given back).
_ATTEMPT_OF = """(SELECT x.id FROM attempts x WHERE x.channel = {r}.channel
    AND x.provider_message_id = {r}.provider_message_id
    ORDER BY x.status = 'delivered' DESC, x.id DESC LIMIT 1)"""



def receipts_of_traces(db: sqlite_utils.Database, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Every receipt of a message an attempt of the traces :traces (a JSON array) sent,
    with that attempt's delivery and number, oldest first."""
    return rows(
        db,
        f"""SELECT r.*, a.delivery_id, a.attempt, a.span_id AS attempt_span
        FROM attempts a JOIN receipts r
          ON r.channel = a.channel AND r.provider_message_id = a.provider_message_id
        WHERE a.trace_id IN (SELECT packed_id(value) FROM json_each(:traces))
          AND a.provider_message_id IS NOT NULL
        ORDER BY r.at_ms, {_RANK_SQL.format(r="r")}, r.id""",
        params,
    )


@dataclass(frozen=True)
class ReceiptRates:
    """Of the messages with a receipt in the window, on one channel: how many the
    platform reported delivered (or read), read, and failed after all (latest)."""

    channel: str | None
    messages: int
    delivered: int
    read: int
    failed: int

    @property
    def delivered_rate(self) -> float:
        return self.delivered / self.messages if self.messages else 0.0

    @property
    def read_rate(self) -> float:
        return self.read / self.messages if self.messages else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self), "delivered_rate": self.delivered_rate, "read_rate": self.read_rate,
        }


def receipt_rates(db: sqlite_utils.Database, since_ms: int) -> list[ReceiptRates]:
    """Per channel, the messages with a receipt at or after ``since_ms`` (from the
    receipts' time index): delivered or read at some point, read, and failed now."""
    found = db.execute(
        """SELECT channel, COUNT(*), SUM(d), SUM(rd), SUM(failed_now) FROM (
            SELECT r.channel, r.provider_message_id,
                MAX(r.status IN ('delivered', 'read')) AS d, MAX(r.status = 'read') AS rd,
                (SELECT l.status FROM receipts l WHERE l.channel = r.channel
                   AND l.provider_message_id = r.provider_message_id
                 ORDER BY l.at_ms DESC, """ + _RANK_SQL.format(r="l") + """ DESC, l.id DESC
                 LIMIT 1) = 'failed' AS failed_now
            FROM receipts r WHERE r.at_ms >= :since
            GROUP BY r.channel, r.provider_message_id
        ) GROUP BY channel ORDER BY channel""",
        {"since": since_ms},
    ).fetchall()
    return [
        ReceiptRates(ch, n, int(d or 0), int(rd or 0), int(f or 0))
        for ch, n, d, rd, f in found
    ]


def failed_after_accept(db: sqlite_utils.Database, since_ms: int) -> list[dict[str, Any]]:
    """Messages the API accepted (an attempt with their provider id delivered) whose
    latest receipt, with a failed receipt at or after ``since_ms``, says failed."""
    failed_lately = (
        "receipts r WHERE r.id IN (SELECT f2.id FROM receipts f JOIN receipts f2 "
        "ON f2.channel = f.channel AND f2.provider_message_id = f.provider_message_id "
        "WHERE f.status = 'failed' AND f.at_ms >= :since)"
    )
    return rows(
        db,
        f"""SELECT l.channel, l.provider_message_id, l.at_ms, l.error_type, l.error_text,
               a.delivery_id, a.trace_id, a.inbound_id, a.attempt
        FROM ({_LATEST.format(source=failed_lately)}) l
        JOIN attempts a ON a.id = {_ATTEMPT_OF.format(r="l")}
        WHERE l.status = 'failed' AND a.status = 'delivered'
        ORDER BY l.at_ms, l.id""",
        {"since": since_ms},
    )


def unmatched_receipts(db: sqlite_utils.Database, since_ms: int) -> int:
    """Receipts at or after ``since_ms`` for a message no attempt in the store sent."""
    (n,) = db.execute(
        """SELECT COUNT(*) FROM receipts r WHERE r.at_ms >= :since AND NOT EXISTS (
            SELECT 1 FROM attempts a WHERE a.channel = r.channel
              AND a.provider_message_id = r.provider_message_id)""",
        {"since": since_ms},
    ).fetchone()
    return int(n)


_FOUND_LIMIT = 10_000


class AttemptFinder:
    """Finds the attempt that sent a message, on the caller's thread, never for long.

    A receipt's span joins that attempt's trace when its row is already in the store;
    any trouble (no store yet, busy, damaged) gives None, and the receipt's row joins
    when read. One read connection per process, opened on first use.
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout_seconds: float = 0.05) -> None:
        self.path = Path(path)
        self.timeout_seconds = timeout_seconds
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()
        # A message brings several statuses (sent, delivered, read): the attempt found
        # for the first is kept for the others. Only hits are kept: a miss may be an
        # attempt whose row is not committed yet.
        self._found: OrderedDict[tuple[Any, Any], tuple[str, str]] = OrderedDict()

    def find(self, channel: Any, provider_message_id: Any) -> tuple[str, str] | None:
        """(trace_id, span_id) of the attempt that sent the message, or None."""
        if os.getpid() != self._pid:  # a forked child: the parent's lock and connection
            self._lock, self._conn, self._pid = threading.Lock(), None, os.getpid()
        if not self._lock.acquire(timeout=self.timeout_seconds):
            return None
        key = (channel, provider_message_id)
        try:
            hit = self._found.get(key)
            if hit is not None:
                self._found.move_to_end(key)
                return hit
            if self._conn is None and not self.path.is_file():
                return None
            from ._schema import connect  # _schema builds on this module's SQL

            with GATE:  # a fork never copies this thread halfway through SQLite
                if self._conn is None:
                    self._conn = connect(
                        self.path, readonly=True, busy_timeout_seconds=self.timeout_seconds
                    )
                found = self._conn.execute(
                    "SELECT trace_id, span_id FROM attempts WHERE channel = ? "
                    "AND provider_message_id = ? ORDER BY status = 'delivered' DESC, id DESC "
                    "LIMIT 1",
                    (channel, provider_message_id),
                ).fetchone()
            if found is None:
                return None
            hit = (str(found[0]), str(found[1]))
            self._found[key] = hit
            if len(self._found) > _FOUND_LIMIT:
                self._found.popitem(last=False)
            return hit
        except sqlite3.Error:
            self.close_locked()
            return None
        finally:
            self._lock.release()

    def close_locked(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:
                pass
