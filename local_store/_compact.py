"""Compacting the store file: the documented step after a large prune.

A prune deletes rows in batches and gives back the pages that became free
(``PRAGMA incremental_vacuum``). Most indexes are keyed by random ids (trace, span,
delivery), so deleting the oldest rows leaves their pages partly filled rather than
free: a prune of half the rows gives back only part of half the file. ``compact``
rewrites the file (SQLite's ``VACUUM``), so the file then holds only the rows kept.

It is a one-off, operator-run step (``otel-delivery prune ... --compact``), not part
of a gateway's retention:

- It needs free disk space of about the store's size next to the store (the WAL
  receives the rewritten file) and as much again in SQLite's temporary directory
  (``SQLITE_TMPDIR``, else ``/var/tmp`` or ``/tmp``); it checks the first before it
  starts.
- It holds the store's write lock until it ends, about 10 s per GB on the benchmark
  machine. Gateways keep running: their calls append rows to their journals, and the
  rows are committed when the lock is free again. Readers are not blocked.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from .exceptions import StoreError

__all__ = ["CompactResult", "compact"]

# Room kept free beyond the rewritten file's size (the WAL's frame headers, the
# file system's own reserve).
_MARGIN = 1.1


@dataclass(frozen=True)
class CompactResult:
    """The file's size before and after, and how long the lock was held."""

    bytes_before: int
    bytes_after: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _int_pragma(db: sqlite_utils.Database, name: str) -> int:
    return int(db.execute(f"PRAGMA {name}").fetchone()[0])


def compact(db: sqlite_utils.Database, path: str | os.PathLike[str]) -> CompactResult:
    """Rewrite the store at ``path`` (open for writing as ``db``) without its free and
    partly filled pages, then shrink its WAL.

    Raises StoreError, before changing anything, when the store's file system has too
    little free space, and if SQLite runs out of space on the way (the store is then
    left as it was: ``VACUUM`` is one transaction).
    """
    p = Path(path)
    before = p.stat().st_size
    page_size = _int_pragma(db, "page_size")
    needed = int((_int_pragma(db, "page_count") - _int_pragma(db, "freelist_count"))
                 * page_size * _MARGIN)
    stat = os.statvfs(p.parent)
    free = stat.f_bavail * stat.f_frsize
    if free < needed:
        raise StoreError(
            f"compacting {p} needs about {_mb(needed)} free next to it (and as much in the "
            f"temporary directory); {_mb(free)} is free: prune without --compact, or free "
            "some space first"
        )
    started = time.monotonic()
    try:
        db.execute("VACUUM")
    except sqlite3.OperationalError as exc:
        if "full" in str(exc).lower():
            raise StoreError(
                f"compacting {p} ran out of disk space ({exc}); the store is unchanged: "
                "free some space (next to it and in SQLite's temporary directory) and retry"
            ) from None
        raise
    # The rewritten pages went through the WAL; copy them back and truncate it, so
    # the space is given back now rather than at some later checkpoint.
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    held = time.monotonic() - started
    return CompactResult(bytes_before=before, bytes_after=p.stat().st_size, seconds=held)


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB"
