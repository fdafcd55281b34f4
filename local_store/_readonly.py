"""Ad-hoc SQL for operators, on a connection that cannot change anything.

Three locks, each enough on its own for writes, together covering what one misses:
the file is opened ``mode=ro``, ``PRAGMA query_only`` is on, and an authorizer lets
through only reading. The authorizer is also what refuses ATTACH (and ``VACUUM
INTO``, which SQLite authorizes as an ATTACH) and PRAGMA, which the other two allow,
and any function not in :data:`~local_store._sqlfunctions.ALLOWED_FUNCTIONS`; it
names what was refused.

And bounds, so that no statement runs or grows for ever (an endless recursive CTE):
a time limit (a progress handler stops the statement), a bound on the result's size
as it is fetched, and on any one string or blob SQLite builds. SQLite's own heap
limit is not used: it is process-wide, and this runs inside gateways too.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ._arguments import check_limit, check_seconds
from ._schema import open_store
from ._sqlfunctions import ALLOWED_FUNCTIONS
from .exceptions import QueryLimitError, QueryRefusedError

__all__ = ["DEFAULT_MAX_RESULT_BYTES", "DEFAULT_QUERY_TIMEOUT_SECONDS", "readonly_query"]

DEFAULT_QUERY_TIMEOUT_SECONDS = 30.0
# The result is held whole (to print a table, or JSON); beyond this it is refused.
DEFAULT_MAX_RESULT_BYTES = 256 * 1024 * 1024
# The longest string or blob a statement may build (zeroblob, group_concat, printf).
_MAX_VALUE_BYTES = 64 * 1024 * 1024
# The deadline is checked every this many SQLite virtual-machine steps (microseconds).
_PROGRESS_STEPS = 10_000
_FETCH_ROWS = 1_000

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
        "DROP_VTABLE", "SAVEPOINT", "FUNCTION",
    )
}
_SCHEMA_BOOKKEEPING = frozenset(
    {sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE}
)


def readonly_query(
    path: str | os.PathLike[str],
    sql: str,
    params: Sequence[Any] | Mapping[str, Any] = (),
    *,
    timeout_seconds: float = DEFAULT_QUERY_TIMEOUT_SECONDS,
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run one read-only SQL statement against the store; return (columns, rows).

    >>> readonly_query("deliveries.db",
    ...                "SELECT channel, COUNT(*) FROM attempts GROUP BY 1")  # doctest: +SKIP
    (['channel', 'COUNT(*)'], [('telegram', 40)])

    Raises QueryRefusedError for anything that would write, attach, detach or change a
    pragma, for a function not allowed, or for more than one statement;
    QueryLimitError when the statement runs past ``timeout_seconds`` or its result
    past about ``max_result_bytes``; StoreNotFoundError, StoreCorruptError or
    StoreVersionError when the file is not a store this version can read.
    """
    check_seconds("timeout_seconds", timeout_seconds)
    check_limit("max_result_bytes", max_result_bytes)
    db = open_store(path, readonly=True)
    conn = db.conn
    try:
        conn.execute("PRAGMA query_only = 1")
        refused: list[str] = []

        def authorize(
            action: int, arg1: str | None, arg2: str | None, _db: str | None, _src: str | None
        ) -> int:
            if action in _ALLOWED_ACTIONS and not (
                action == sqlite3.SQLITE_FUNCTION
                and (arg2 or "").lower() not in ALLOWED_FUNCTIONS
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

        length_limit = getattr(sqlite3, "SQLITE_LIMIT_LENGTH", None)  # Python 3.11+
        setlimit = getattr(conn, "setlimit", None)
        if length_limit is not None and setlimit is not None:
            setlimit(length_limit, _MAX_VALUE_BYTES)
        conn.set_authorizer(authorize)
        deadline = time.monotonic() + timeout_seconds
        stopped: list[str] = []

        def progress() -> int:
            if time.monotonic() < deadline:
                return 0
            stopped.append("time")
            return 1  # SQLite stops the statement: "interrupted"

        conn.set_progress_handler(progress, _PROGRESS_STEPS)
        try:
            cur = conn.execute(sql, params)
            found = _fetch(cur, max_result_bytes)
        except sqlite3.OperationalError as exc:
            if stopped or "interrupted" in str(exc):
                raise QueryLimitError(
                    f"query stopped after {timeout_seconds:g}s, its time limit "
                    "(--timeout to allow more; add a LIMIT, or a WHERE on a time column)"
                ) from None
            if "too big" in str(exc):
                raise QueryLimitError(
                    f"query stopped: a value it built is over {_MAX_VALUE_BYTES} bytes"
                ) from None
            raise _refused_or(exc, refused) from None
        except MemoryError:
            raise QueryLimitError("query stopped: it ran out of memory (add a LIMIT)") from None
        except (sqlite3.ProgrammingError, sqlite3.Warning) as exc:
            if "one statement" in str(exc):
                raise QueryRefusedError(
                    "query takes one SQL statement at a time: more than one was refused"
                ) from None
            raise
        except sqlite3.DatabaseError as exc:
            if "too big" in str(exc):
                raise QueryLimitError(
                    f"query stopped: a value it built is over {_MAX_VALUE_BYTES} bytes"
                ) from None
            raise _refused_or(exc, refused) from None
        columns = [d[0] for d in cur.description or ()]
        return columns, found
    finally:
        conn.close()


def _refused_or(exc: sqlite3.DatabaseError, refused: list[str]) -> Exception:
    """What to raise for ``exc``: a refusal the authorizer made, or ``exc`` itself."""
    if refused:
        what = refused[0]
        if what.startswith("FUNCTION "):
            return QueryRefusedError(
                f"query cannot call {what[len('FUNCTION '):]}(): only SQLite's core, date, "
                "JSON and math functions are allowed"
            )
        return QueryRefusedError(f"query is read-only: {what} refused; only SELECT is allowed")
    if "readonly" in str(exc) or "may not be modified" in str(exc):
        return QueryRefusedError(f"query is read-only: write refused ({exc})")
    return exc


def _size(value: Any) -> int:
    if isinstance(value, (str, bytes)):
        return 49 + len(value)
    return 24


def _fetch(cur: sqlite3.Cursor, max_bytes: int) -> list[tuple[Any, ...]]:
    """Every row of ``cur``, or QueryLimitError once they take about ``max_bytes``."""
    found: list[tuple[Any, ...]] = []
    size = 0
    while True:
        rows = cur.fetchmany(_FETCH_ROWS)
        if not rows:
            return found
        for row in rows:
            size += 56 + 8 * len(row) + sum(_size(v) for v in row)
        if size > max_bytes:
            raise QueryLimitError(
                f"query stopped: its result passed {max_bytes // (1024 * 1024)} MB after "
                f"{len(found) + len(rows)} rows (add a LIMIT, or select fewer columns)"
            )
        found.extend(rows)
