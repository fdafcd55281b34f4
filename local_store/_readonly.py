"""Ad-hoc SQL for operators, on a connection that cannot change anything.

Three locks, each enough on its own for writes, together covering what one misses:
the file is opened ``mode=ro``, ``PRAGMA query_only`` is on, and an authorizer lets
through only reading. The authorizer is also what refuses ATTACH (and ``VACUUM
INTO``, which SQLite authorizes as an ATTACH) and PRAGMA, which the other two allow,
and it names what was refused.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from ._schema import open_store
from .exceptions import QueryRefusedError

__all__ = ["readonly_query"]

_ALLOWED_ACTIONS = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
)
# Authorizer action codes share their values with result codes in the sqlite3 module,
# so the names are listed rather than looked up.
_ACTION_NAMES = {
    getattr(sqlite3, f"SQLITE_{name}"): name.replace("_", " ")
    for name in (
        "CREATE_INDEX", "CREATE_TABLE", "CREATE_TEMP_INDEX", "CREATE_TEMP_TABLE",
        "CREATE_TEMP_TRIGGER", "CREATE_TEMP_VIEW", "CREATE_TRIGGER", "CREATE_VIEW", "DELETE",
        "DROP_INDEX", "DROP_TABLE", "DROP_TEMP_INDEX", "DROP_TEMP_TABLE", "DROP_TEMP_TRIGGER",
        "DROP_TEMP_VIEW", "DROP_TRIGGER", "DROP_VIEW", "INSERT", "PRAGMA", "TRANSACTION",
        "UPDATE", "ATTACH", "DETACH", "ALTER_TABLE", "REINDEX", "ANALYZE", "CREATE_VTABLE",
        "DROP_VTABLE", "SAVEPOINT",
    )
}
_SCHEMA_BOOKKEEPING = frozenset(
    {sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE}
)
# Extension loading is off on our connections anyway; refusing it by name costs nothing.
_REFUSED_FUNCTIONS = frozenset({"load_extension"})


def readonly_query(
    path: str | os.PathLike[str],
    sql: str,
    params: Sequence[Any] | Mapping[str, Any] = (),
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run one read-only SQL statement against the store; return (columns, rows).

    >>> readonly_query("deliveries.db",
    ...                "SELECT channel, COUNT(*) FROM attempts GROUP BY 1")  # doctest: +SKIP
    (['channel', 'COUNT(*)'], [('telegram', 40)])

    Raises QueryRefusedError for anything that would write, attach, detach or change a
    pragma, or for more than one statement; StoreNotFoundError, StoreCorruptError or
    StoreVersionError when the file is not a store this version can read.
    """
    db = open_store(path, readonly=True)
    conn = db.conn
    try:
        conn.execute("PRAGMA query_only = 1")
        refused: list[str] = []

        def authorize(
            action: int, arg1: str | None, arg2: str | None, _db: str | None, _src: str | None
        ) -> int:
            if action in _ALLOWED_ACTIONS and not (
                action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _REFUSED_FUNCTIONS
            ):
                return sqlite3.SQLITE_OK
            # SQLite asks about its own schema table as bookkeeping: before CREATE and
            # DROP (let through, so the statement's own action is the one refused and
            # named), and when json_each() and other table-valued functions are first
            # used. sqlite_master itself can never be edited by SQL, and the file is
            # read-only regardless.
            if action in _SCHEMA_BOOKKEEPING and arg1 in ("sqlite_master", "sqlite_temp_master"):
                return sqlite3.SQLITE_OK
            what = _ACTION_NAMES.get(action, f"action {action}")
            target = arg2 if action == sqlite3.SQLITE_FUNCTION else arg1
            refused.append(f"{what} {target}" if target else what)
            return sqlite3.SQLITE_DENY

        conn.set_authorizer(authorize)
        try:
            cur = conn.execute(sql, params)
            found = cur.fetchall()
        except (sqlite3.ProgrammingError, sqlite3.Warning) as exc:
            if "one statement" in str(exc):
                raise QueryRefusedError(
                    "query takes one SQL statement at a time: more than one was refused"
                ) from None
            raise
        except sqlite3.DatabaseError as exc:
            if refused:
                raise QueryRefusedError(
                    f"query is read-only: {refused[0]} refused; only SELECT is allowed"
                ) from None
            if "readonly" in str(exc) or "may not be modified" in str(exc):
                raise QueryRefusedError(f"query is read-only: write refused ({exc})") from None
            raise
        columns = [d[0] for d in cur.description or ()]
        return columns, found
    finally:
        conn.close()
