"""Committing what dead writers left in their journals, whatever the files hold.

A journal file is read back by the next writable open of the store (a restarted
gateway, any CLI command), so a bad line in one must never stop that open: a line
that is not a ``[kind, row]`` pair, nests too deeply, has a value that fits no
column or that SQLite refuses. Each line is checked and its values fitted to their
columns (``_values.py``); a line that cannot be written is set aside in the
quarantine file ``<store>-quarantine.jsonl`` (one JSON object a line: when, which
journal, why, and the line) and counted in ``drops`` as ``bad_journal_line``; the
good lines around it are written. Only a store that cannot be written at all (busy,
read-only, full) stops a replay, and leaves the file for the next try.

Only files with a journal's exact name and first line are read, and deleted once
replayed; they are opened without following symlinks or blocking, must be regular
files, and are read up to :data:`MAX_JOURNAL_BYTES`.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from ._fs import open_regular, read_bounded
from ._journal import HEADER, SQL, journal_files, same_file
from ._rows import DROP_SQL, REPLAY_SQL, row_params, table_of
from ._values import clean_row, missing_required

__all__ = ["BAD_JOURNAL_LINE", "MAX_JOURNAL_BYTES", "quarantine_path", "replay_orphans"]

_log = logging.getLogger("local_store")

# A writer's file stops taking rows at 1 MB (plus one line); anything much larger
# was not written by one, and is read only this far.
MAX_JOURNAL_BYTES = 16 * 1024 * 1024
# A line is one row of short values (texts are cut at a few KB before journaling).
MAX_LINE_BYTES = 256 * 1024
# The quarantine file stops growing here; lines past it are counted, not kept.
QUARANTINE_LIMIT = 16 * 1024 * 1024
_QUARANTINED_LINE_CHARS = 64 * 1024
BAD_JOURNAL_LINE = "bad_journal_line"
_UNWRITABLE = "unwritable_row"
# SQLite primary result codes that are about the store, not the row: busy, locked,
# out of memory, read-only, I/O error, corrupt, full, cannot open, not a database.
_STORE_CODES = frozenset({5, 6, 7, 8, 10, 11, 13, 14, 26})


def quarantine_path(store: str | os.PathLike[str]) -> Path:
    return Path(f"{store}-quarantine.jsonl")


def _store_problem(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in _STORE_CODES
    text = str(exc).lower()
    return any(w in text for w in ("locked", "readonly", "disk", "i/o", "memory", "unable"))


def _int_or_text(digits: str) -> int | str:
    # A number longer than any 64-bit one stays text, for _values to refuse as a value
    # (int() of one of thousands of digits would fail the whole line, or be slow).
    return int(digits) if len(digits) <= 20 else digits


def _parse(
    line: bytes, now_ms: int
) -> tuple[tuple[str, dict[str, Any], list[tuple[str, str]]] | None, str]:
    """(kind, row, value problems), or None and why the line cannot be written."""
    if len(line) > MAX_LINE_BYTES:
        return None, f"line of {len(line)} bytes, over {MAX_LINE_BYTES}"
    try:
        parsed = json.loads(line, parse_int=_int_or_text)
    except RecursionError:
        return None, "nested too deeply"
    except Exception as exc:  # ValueError, UnicodeDecodeError
        return None, f"not JSON ({type(exc).__name__})"
    if not isinstance(parsed, list) or len(parsed) != 2:
        return None, "not a [kind, row] pair"
    kind, row = parsed
    if not isinstance(kind, str) or kind not in SQL:
        return None, "unknown kind of row"
    if not isinstance(row, dict):
        return None, "row is not an object"
    problems = clean_row(table_of(kind), row, now_ms)
    missing = missing_required(table_of(kind), row)
    if missing:
        return None, f"no usable {', '.join(missing)}"
    return (kind, row, problems), ""


def replay_orphans(conn: sqlite3.Connection, store: str | os.PathLike[str]) -> int:
    """Commit the rows of the store's journal files that no living process holds, then
    delete the files; return how many rows were written.

    Replaying twice writes the same rows (a row already there is kept; an attempt's
    outcome is set again to itself). A line cut short at the end (a full disk
    mid-append) is skipped: its row was queued in memory when the append failed.
    Raises ``sqlite3.Error`` only if the store is busy or cannot be written:
    the files then stay for the next try.
    """
    written = 0
    for path in journal_files(store):
        try:
            fd = open_regular(path, os.O_RDONLY)
        except OSError:
            continue  # deleted meanwhile, or not a regular file: not ours
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its writer is alive
            if not same_file(fd, path):
                continue  # another replayer finished it between our open and our lock
            if os.read(fd, len(HEADER)) != HEADER:
                continue  # named like a journal, but not one we wrote: leave it be
            data = read_bounded(fd, MAX_JOURNAL_BYTES + 1)
            written += _apply(conn, data, path, Path(store))
            if same_file(fd, path):
                os.unlink(path)
        finally:
            os.close(fd)
    return written


def _apply(conn: sqlite3.Connection, data: bytes, path: Path, store: Path) -> int:
    now = time.time_ns() // 1_000_000
    lines = data[:MAX_JOURNAL_BYTES].split(b"\n")
    lines.pop()  # after the last newline: nothing, or a line cut short
    bad: list[tuple[bytes, str]] = []
    if len(data) > MAX_JOURNAL_BYTES:
        bad.append((b"", f"journal over {MAX_JOURNAL_BYTES} bytes; the rest was not read"))
    rows: list[tuple[str, dict[str, Any], bytes]] = []
    counts: dict[str, list[Any]] = {}  # reason -> [count, last detail]

    def count(reason: str, detail: str) -> None:
        entry = counts.setdefault(reason, [0, None])
        entry[0] += 1
        entry[1] = detail[:300]

    for line in lines:
        if not line.strip():
            continue
        parsed, why = _parse(line, now)
        if parsed is None:
            bad.append((line, why))
            continue
        kind, row, problems = parsed
        for reason, detail in problems:
            count(reason, detail)
        rows.append((kind, row, line))
    if not rows and not bad and not counts:
        return 0
    if conn.in_transaction:  # the caller's transaction is not ours to commit
        raise sqlite3.OperationalError("replay_orphans needs a connection outside a transaction")
    written = 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        for kind, row, line in rows:
            try:
                conn.execute(REPLAY_SQL[kind], row_params(kind, row, replay=True))
                written += 1
            except sqlite3.Error as exc:
                if isinstance(exc, sqlite3.OperationalError) and _store_problem(exc):
                    raise
                count(_UNWRITABLE, f"{kind}: {exc!r}")
                bad.append((line, f"unwritable: {exc}"))
            except Exception as exc:  # OverflowError, ValueError: a value cleaning missed
                count(_UNWRITABLE, f"{kind}: {exc!r}")
                bad.append((line, f"unwritable: {exc!r}"))
        for _line, why in bad:
            if not why.startswith("unwritable"):
                count(BAD_JOURNAL_LINE, f"{path.name}: {why}")
        for reason, (n, detail) in counts.items():
            conn.execute(DROP_SQL, (reason, n, now, now, detail))
        conn.execute("COMMIT")
    except BaseException:
        conn.rollback()
        raise
    if bad:
        kept = _quarantine(store, path, bad, now)
        _log.warning(
            "otel-delivery set aside %d bad lines of %s (%d kept in %s)",
            len(bad), path.name, kept, quarantine_path(store),
        )
    _log.info("otel-delivery replayed %d rows from %s", written, path.name)
    return written


def _quarantine(store: Path, journal: Path, bad: list[tuple[bytes, str]], now: int) -> int:
    """Append the bad lines to the quarantine file; return how many were kept."""
    try:
        fd = open_regular(quarantine_path(store), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    except OSError as exc:
        _log.warning("otel-delivery cannot write %s (%s)", quarantine_path(store), exc)
        return 0
    kept = 0
    try:
        size = os.fstat(fd).st_size
        for line, why in bad:
            text = line[: _QUARANTINED_LINE_CHARS].decode("utf-8", "replace")
            record = json.dumps(
                {"at_ms": now, "journal": journal.name, "why": why, "line": text},
                ensure_ascii=True,
            ) + "\n"
            encoded = record.encode()
            if size + len(encoded) > QUARANTINE_LIMIT:
                break
            os.write(fd, encoded)
            size += len(encoded)
            kept += 1
    except OSError as exc:
        _log.warning("otel-delivery cannot write %s (%s)", quarantine_path(store), exc)
    finally:
        os.close(fd)
    return kept
