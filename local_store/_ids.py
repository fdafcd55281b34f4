"""Ids as the store keeps them: a 16- or 32-digit lowercase hex id as its bytes.

Trace and span ids are OpenTelemetry's 32- and 16-digit lowercase hex ids, and so are
the delivery ids otel-delivery makes up. The store keeps such an id as a BLOB of
half the length, in its tables and in every index on it; any other id (a gateway's
own ``"dlv-42"``, upper case, another length) is kept as the text it is.
Both forms compare exactly, so joins between tables need no conversion.

The conversion happens at the store's edges only:

- :func:`pack` turns each id parameter into the stored form (``_rows.py`` for every
  row written, the queries for every id they look up), and ``packed_id()`` does the
  same inside SQL (for ids passed as a JSON array), on every connection
  ``_schema.connect`` opens;
- every value read through such a connection comes back with each BLOB as hex text
  (:func:`unpack_row`, its row factory); a query that reads many rows shows its ids
  as hex in SQL instead (:func:`hex_sql`, :func:`plain_cursor`). The only BLOB the
  store holds besides ids, the rollups' ``x''`` for NULL, is decoded in SQL
  (``_rollups.decode``) before it is read;
- the ``v_*`` views show ids as hex text (:func:`hex_sql`) for people typing SQL.
"""

from __future__ import annotations

import sqlite3
from typing import Any

__all__ = [
    "ID_COLUMNS", "hex_sql", "pack", "plain_cursor", "register", "unpack_row",
]

_HEX = frozenset("0123456789abcdef")

#: The id columns of each table that keeps ids in the packed form.
ID_COLUMNS: dict[str, tuple[str, ...]] = {
    "inbound_messages": ("trace_id", "span_id"),
    "ai_runs": ("trace_id", "span_id", "parent_span_id", "verdict_delivery_id"),
    "enqueues": ("trace_id", "span_id", "parent_span_id", "delivery_id"),
    "attempts": ("delivery_id", "trace_id", "span_id", "parent_span_id"),
    "receipts": ("trace_id", "span_id", "attempt_span_id"),
    "traces_to_judge": ("trace_id",),
    "split_deliveries": ("delivery_id",),
    "rollup_recount": ("delivery_id",),
}


def pack(value: Any) -> Any:
    """The stored form of an id: the bytes of a 16- or 32-digit lowercase hex string;
    any other value unchanged.

    >>> pack("00000000000000f1"), pack("dlv-1"), pack("00f1"), pack("ABCD"), pack(None)
    (b'\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\xf1', 'dlv-1', '00f1', 'ABCD', None)
    """
    if isinstance(value, str) and len(value) in (16, 32) and _HEX.issuperset(value):
        return bytes.fromhex(value)
    return value


def unpack_row(_cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A row factory: every BLOB in ``row`` as hex text."""
    if bytes in map(type, row):
        return tuple([v.hex() if type(v) is bytes else v for v in row])
    return row


def hex_sql(column: str) -> str:
    """SQL that shows ``column`` as an id as read (the views; :func:`plain_cursor`).

    >>> hex_sql("a.trace_id")
    "CASE WHEN typeof(a.trace_id) = 'blob' THEN lower(hex(a.trace_id)) ELSE a.trace_id END"
    """
    return (
        f"CASE WHEN typeof({column}) = 'blob' THEN lower(hex({column})) ELSE {column} END"
    )


def plain_cursor(conn: sqlite3.Connection) -> sqlite3.Cursor:
    """A cursor without the row factory, for a query that reads many rows and shows
    its ids as hex itself (:func:`hex_sql`): the factory's call per row costs
    ``undelivered`` about 3 ms of its 45 for the 6 000 runs of a 10M-attempt store."""
    cur = conn.cursor()
    cur.row_factory = None
    return cur


def register(conn: sqlite3.Connection) -> None:
    """Give ``conn`` the ``packed_id()`` SQL function and the row factory above."""
    conn.create_function("packed_id", 1, pack, deterministic=True)
    conn.row_factory = unpack_row
