"""The writer's connection to the store file: opening it, noticing it replaced, letting go.

Opening a store for writing registers this process in ``writers`` (once per file),
commits the journals dead writers left (``_replay.py``) and marks their unfinished
attempts interrupted (``_rescue.py``). A damaged store is moved aside so a fresh one
can start. Every SQLite call here runs inside the fork gate (``_forkgate.py``).
"""

from __future__ import annotations

import functools
import os
import socket
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

from ._forkgate import GATE
from ._ratelimit import RateLimitedLog
from ._replay import replay_orphans
from ._rescue import rescue_interrupted
from ._schema import open_store
from .exceptions import StoreCorruptError

__all__ = ["FileIdentity", "StoreFile", "gated", "now_ms"]

FileIdentity = tuple[int, int]  # (st_dev, st_ino)

# Connections that must never be closed: inherited across a fork (the parent still
# uses the file), or open on a store file that was deleted or replaced. Closing the
# last connection to a WAL database checkpoints it and unlinks "<path>-wal" by name,
# which could be the WAL of the parent's, or of the new, store. Keeping them
# referenced here stops the garbage collector from closing them; both events are rare.
abandoned_connections: list[sqlite3.Connection] = []

_F = TypeVar("_F", bound=Callable[..., Any])


def gated(method: _F) -> _F:
    """Run ``method`` inside the fork gate: it calls SQLite. Taken after any of our
    locks, never before one, so a fork never waits on a lock."""

    @functools.wraps(method)
    def inside(*args: Any, **kwargs: Any) -> Any:
        with GATE:
            return method(*args, **kwargs)

    return cast(_F, inside)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class StoreFile:
    """One store path as this process writes it: which file it registered in, and as
    which writer."""

    def __init__(self, path: Path, service: str | None, log: RateLimitedLog) -> None:
        self.path = path
        self.service = service
        self.log = log
        self.writer_id: int | None = None
        self._registered_in: FileIdentity | None = None

    @gated
    def open(
        self, timeout_seconds: float, *, upgrade: bool = True,
        on_moved_aside: Callable[[str], None] | None = None,
    ) -> tuple[sqlite3.Connection, FileIdentity]:
        """A connection for writing, and the identity of the file it is open on.

        Raises what ``open_store`` raises (busy, read-only, an older schema with
        ``upgrade=False``); a damaged store is moved aside and a new one created."""
        try:
            db = open_store(self.path, create=True, busy_timeout_seconds=timeout_seconds,
                            upgrade=upgrade)
        except StoreCorruptError as exc:
            if not exc.damaged:
                raise
            aside = self._move_aside(exc)
            if on_moved_aside is not None:
                on_moved_aside(aside)
            db = open_store(self.path, create=True, busy_timeout_seconds=timeout_seconds,
                            upgrade=upgrade)
        st = os.stat(self.path)
        identity = (st.st_dev, st.st_ino)
        conn = db.conn
        # The indexer checkpoints (see ``_upkeep.py``).
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        if identity != self._registered_in:
            # A new file (first open, or the old one was deleted or moved aside):
            # this process registers as a writer of it, and rescues its orphans.
            cur = conn.execute(
                "INSERT INTO writers (pid, host, service, started_at_ms) VALUES (?, ?, ?, ?)",
                (os.getpid(), socket.gethostname(), self.service, now_ms()),
            )
            self.writer_id = cur.lastrowid
            self._registered_in = identity
            conn.commit()
            # Rows a dead writer left in its journal first, so that only attempts
            # that really never ended are marked interrupted.
            try:
                replay_orphans(conn, self.path)
            except sqlite3.OperationalError as exc:
                self.log.warning("replay", "otel-delivery could not replay journals of %s "
                                 "(%s)", self.path, exc)
            rescue_interrupted(conn)
        return conn, identity

    def _move_aside(self, exc: StoreCorruptError) -> str:
        """Keep a damaged store for forensics under a new name; return that name."""
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{os.getpid()}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                os.replace(src, Path(f"{aside}{suffix}"))
        self.log.warning(
            "corrupt", "otel-delivery store %s was damaged (%s); moved it to %s and started "
            "a new one", self.path, exc, aside,
        )
        return str(aside)

    def replaced(self, identity: FileIdentity | None) -> bool:
        """True when the path no longer names the file we have open (deleted, moved)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return True
        return identity != (st.st_dev, st.st_ino)

    @gated
    def release(self, conn: sqlite3.Connection | None, identity: FileIdentity | None) -> None:
        """Close ``conn``, unless its file is no longer at our path (see above)."""
        if conn is None:
            return
        if self.replaced(identity):
            abandoned_connections.append(conn)
            return
        try:
            conn.rollback()
            conn.close()
        except Exception:  # the connection is already broken; nothing to keep
            pass
