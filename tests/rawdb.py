"""Plain sqlite3 connections for tests that read or write the store's tables
directly: ids read back as hex text, as the library reads them, and the
``packed_id()`` SQL function writes them in the store's form (``local_store/_ids.py``).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from local_store._ids import register, unpack_row

__all__ = ["Row", "connect"]


def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
    """``sqlite3.connect`` with ids read as hex and ``packed_id()`` available."""
    conn = sqlite3.connect(*args, **kwargs)
    register(conn)
    return conn


def Row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> sqlite3.Row:
    """``sqlite3.Row`` with ids as hex: a row factory."""
    return sqlite3.Row(cursor, unpack_row(cursor, row))
