"""Opening a store file and keeping its schema current (``_migrations.py`` holds
the migrations). A store that records a migration this code does not know is refused
rather than guessed at: it was written by a newer otel-delivery, or by a build from
before the baseline schema (``_migrations.py``).

Every timestamp is integer Unix milliseconds (``*_at_ms``); the ``v_*`` views
show them as ISO-8601 text for people typing SQL.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
from pathlib import Path

import sqlite_utils

from ._fs import NotRegularFileError, check_store_path, create_private_file, open_regular
from ._ids import register as register_ids
from ._journal import journal_files
from ._migrations import KNOWN_MIGRATIONS, PRE_BASELINE_MIGRATIONS, SCHEMA_VERSION, migrations
from ._replay import replay_orphans
from .exceptions import (
    StoreCorruptError,
    StoreNotFoundError,
    StoreUpgradeNeededError,
    StoreVersionError,
)

__all__ = [
    "SCHEMA_VERSION", "connect", "is_damage", "open_for_reading", "open_store",
    "schema_version", "stopped_journals",
]

_log = logging.getLogger("local_store")

DEFAULT_BUSY_TIMEOUT_SECONDS = 5.0


def connect(
    path: str | os.PathLike[str],
    *,
    readonly: bool = False,
    busy_timeout_seconds: float = DEFAULT_BUSY_TIMEOUT_SECONDS,
) -> sqlite3.Connection:
    """A raw connection with our pragmas, reading and writing ids as ``_ids.py``
    says; the schema is not touched."""
    p = Path(path)
    if readonly:
        conn = sqlite3.connect(
            f"{p.resolve().as_uri()}?mode=ro",
            uri=True,
            timeout=busy_timeout_seconds,
            check_same_thread=False,
        )
    else:
        conn = sqlite3.connect(str(p), timeout=busy_timeout_seconds, check_same_thread=False)
    try:
        register_ids(conn)
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_seconds * 1000)}")
        if not readonly:
            conn.execute("PRAGMA synchronous = NORMAL")
    except sqlite3.DatabaseError as exc:
        conn.close()
        if is_damage(exc):
            raise _corrupt(p, exc) from exc
        raise
    return conn


def is_damage(exc: BaseException) -> bool:
    """True for SQLite's "not a database" and "malformed" errors, not for locks or I/O."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        # Primary result codes SQLITE_CORRUPT (11) and SQLITE_NOTADB (26); the low
        # byte of an extended code is its primary code.
        return code & 0xFF in (11, 26)
    text = str(exc).lower()  # Python 3.10 has no error codes on exceptions
    return "not a database" in text or "malformed" in text


def _corrupt(path: Path, exc: BaseException) -> StoreCorruptError:
    error = StoreCorruptError(
        f"{path} is not a readable otel-delivery store ({exc}); "
        "move it aside and let the gateway create a new one"
    )
    error.damaged = True
    return error


def schema_version(db: sqlite_utils.Database) -> int:
    """The number of our migrations applied to ``db`` (0 for an empty file).

    Raises StoreVersionError when the file records migrations we do not know.
    """
    applied = [m.name for m in migrations.applied(db)]
    if any(name in PRE_BASELINE_MIGRATIONS for name in applied):
        raise StoreVersionError(
            f"{_db_path(db)} was written by an earlier otel-delivery build that this one "
            "cannot read: move it aside (e.g. rename it to *.old) and the gateway starts "
            "a new store"
        )
    unknown = [name for name in applied if name not in KNOWN_MIGRATIONS]
    if unknown:
        raise StoreVersionError(
            f"this store was written by a newer otel-delivery (schema has {', '.join(unknown)}; "
            f"this version knows up to {KNOWN_MIGRATIONS[-1]}): upgrade otel-delivery to read it"
        )
    return len(applied)


def _db_path(db: sqlite_utils.Database) -> str:
    row = db.execute("PRAGMA database_list").fetchone()
    return str(row[2]) if row and row[2] else "this store"


def open_store(
    path: str | os.PathLike[str],
    *,
    create: bool = False,
    readonly: bool = False,
    busy_timeout_seconds: float = DEFAULT_BUSY_TIMEOUT_SECONDS,
    upgrade: bool = True,
) -> sqlite_utils.Database:
    """Open (and with ``create=True``, create or upgrade) the store at ``path``.

    With ``upgrade=False`` an existing store with an older schema raises
    StoreUpgradeNeededError instead of being upgraded (which can take minutes on a
    large store): a gateway's caller thread opens stores that way.

    Every writable open with ``upgrade=True`` first commits the rows left in the
    journals of writers that died (see ``_journal.py``).

    >>> db = open_store("/tmp/deliveries.db", create=True)  # doctest: +SKIP
    >>> db["attempts"].count  # doctest: +SKIP
    0

    Raises StoreNotFoundError, StoreCorruptError, StoreVersionError or
    StoreUpgradeNeededError.
    """
    p = Path(path)
    if p.is_dir():
        raise StoreCorruptError(f"{p} is a directory, not a store file")
    try:
        absent = check_store_path(p, create=create)
    except NotRegularFileError as exc:
        raise StoreCorruptError(f"{p} {exc.strerror}") from None
    if absent:
        if not create:
            raise StoreNotFoundError(
                f"no store at {p}: run a gateway configured with otel_delivery.configure() "
                "(or `otel-delivery demo`) first, or pass --store PATH"
            )
        # SQLite creates the -wal and -shm files with the main file's mode, so this
        # covers all three.
        create_private_file(p)
    conn = connect(p, readonly=readonly, busy_timeout_seconds=busy_timeout_seconds)
    db = sqlite_utils.Database(conn, execute_plugins=False)
    try:
        version = schema_version(db)
        foreign_tables = set(db.table_names()) - {migrations.migrations_table}
        if version == 0 and (readonly or not create or foreign_tables or p.is_symlink()):
            # (Through a symlink, only an existing store is opened: see _fs.py.)
            # Never add our tables to somebody else's database.
            raise StoreCorruptError(
                f"{p} is not an otel-delivery store (no otel-delivery schema in it)"
            )
        if version < SCHEMA_VERSION:
            if readonly:
                # Upgrading needs a writer (any configured gateway does it);
                # open_for_reading refuses the store until then.
                return db
            if version == 0:
                _make_private(p)  # an empty file someone else made: it holds rows now
            if version > 0 and not upgrade:
                raise StoreUpgradeNeededError(
                    f"{p} has schema {version} of {SCHEMA_VERSION}: it is upgraded by the "
                    "background writer, or by `otel-delivery upgrade`"
                )
            _migrate(db)
        if not readonly and upgrade:
            _replay_journals(db, p)
    except (StoreVersionError, StoreCorruptError, StoreUpgradeNeededError):
        conn.close()
        raise
    except sqlite3.DatabaseError as exc:
        conn.close()
        if is_damage(exc):
            raise _corrupt(p, exc) from exc
        raise
    return db


def open_for_reading(path: str | os.PathLike[str]) -> sqlite_utils.Database:
    """Open the store read-only, for a reader that must not change it (the CLI's
    questions). A store of an older schema is refused: a writer upgrades it first.

    Raises what :func:`open_store` raises, and StoreUpgradeNeededError.
    """
    db = open_store(path, readonly=True)
    version = schema_version(db)
    if version < SCHEMA_VERSION:
        db.close()
        raise StoreUpgradeNeededError(
            f"{path} has schema {version} of {SCHEMA_VERSION} and readers never change a "
            "store: upgrade it with `otel-delivery upgrade`, or start a gateway on it"
        )
    return db


def stopped_journals(path: str | os.PathLike[str]) -> int:
    """How many journal files of the store belong to writers that stopped: rows that
    reach the store when a writer next opens it (``otel-delivery upgrade``, a gateway).
    Read-only: a file is only opened and its lock tried."""
    n = 0
    for journal in journal_files(path):
        try:
            fd = open_regular(journal, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its writer is alive
        else:
            n += 1
        finally:
            os.close(fd)  # closing lets the lock go
    return n


def _make_private(path: Path) -> None:
    try:
        fd = open_regular(path, os.O_RDONLY)
    except OSError:
        return  # SQLite has it open already; a file we cannot open we cannot chmod
    try:
        os.fchmod(fd, 0o600)
    except OSError:
        pass  # not ours (a store shared between users): its owner decides
    finally:
        os.close(fd)


def _replay_journals(db: sqlite_utils.Database, path: Path) -> None:
    """Commit what dead writers left in their journals (see ``_journal.py``), so every
    reader after a crash sees their outcomes. A busy or read-only store leaves the
    files for the next open."""
    try:
        replay_orphans(db.conn, path)
    except sqlite3.OperationalError as exc:
        _log.warning("otel-delivery could not replay the journals of %s yet (%s)", path, exc)


def _migrate(db: sqlite_utils.Database) -> None:
    tables = db.table_names()
    if not tables:
        # auto_vacuum only takes effect on a file with no tables yet, and it must
        # precede WAL; prune relies on it to give space back incrementally.
        db.execute("PRAGMA auto_vacuum = INCREMENTAL")
    db.enable_wal()
    # Two processes may create the same new store at once: the loser of the race
    # sees "table already exists", and finds the schema complete when it looks again.
    for attempt in range(5):
        try:
            migrations.apply(db)
            return
        except sqlite3.OperationalError:
            if schema_version(db) >= SCHEMA_VERSION:
                return
            if attempt == 4:
                raise
