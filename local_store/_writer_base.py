"""The parts of :class:`~local_store.StoreWriter` share these: its settings and
pacing constants, the helpers every write path uses, and the declaration of the
state they share (``_WriterState``). See ``_writer.py`` for how rows are written.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

from ._forkgate import GATE
from ._journal import Journal
from ._ratelimit import RateLimitedLog
from ._rows import (
    OUTCOME_COLUMNS,
)
from .exceptions import StoreError

__all__ = [
    "DEFAULT_FLUSH_INTERVAL_SECONDS", "DEFAULT_HOT_PATH_COOLDOWN_SECONDS",
    "DEFAULT_HOT_PATH_TIMEOUT_SECONDS", "DEFAULT_MAX_QUEUE",
]

_log = logging.getLogger("local_store")

DEFAULT_MAX_QUEUE = 20_000
DEFAULT_FLUSH_INTERVAL_SECONDS = 0.25
DEFAULT_HOT_PATH_TIMEOUT_SECONDS = 0.05
DEFAULT_HOT_PATH_COOLDOWN_SECONDS = 1.0
# Rows per background transaction: the most, the fewest, and the lock time aimed at.
_BATCH_SIZE = 1_000
_MIN_BATCH = 20
_BATCH_HOLD_SECONDS = 0.015
# A hot-path wait that times out while the background thread has held the lock this
# long means it is stuck behind another process: open the circuit, as for a busy store.
_STUCK_AFTER_TIMEOUTS = 4
# Checkpoint the WAL after this many hot-path commits, or this long after a write.
_CHECKPOINT_EVERY_COMMITS = 200
_CHECKPOINT_INTERVAL_SECONDS = 1.0
# The background thread waits for another process's write lock in short tries, with
# our own lock let go in between, so the hot path never queues behind that wait.
_BG_BUSY_TRY_SECONDS = 0.02
_BG_BUSY_GIVE_UP_SECONDS = 5.0
# How often the background thread looks for journals left by dead processes.
_ORPHAN_CHECK_SECONDS = 1.0
# How often the background thread judges the traces waiting for a verdict
# (``_verdicts.py``), how many per transaction, and for how long at most per turn.
_JUDGE_EVERY_SECONDS = 1.0
_JUDGE_BATCH = 200
_JUDGE_TURN_SECONDS = 0.1
# The key under which a queued row carries the journal segment that holds it.
_JOURNALED = "\0journal"


class _StoreBusy(Exception):
    """Another process holds the write lock; the batch was not started."""


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    """True for SQLITE_BUSY: another connection holds the write lock."""
    code = getattr(exc, "sqlite_errorcode", None)  # None before Python 3.11
    return code & 0xFF == 5 if isinstance(code, int) else "locked" in str(exc)


def _is_row_problem(exc: BaseException) -> bool:
    """True when a write failed because of the row itself, not the store."""
    if isinstance(exc, StoreError):
        return False
    return isinstance(
        exc,
        (OverflowError, TypeError, ValueError, sqlite3.InterfaceError,
         sqlite3.IntegrityError, sqlite3.ProgrammingError),
    )


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _merge_attempts(
    batch: list[tuple[str, dict[str, Any]]],
) -> list[tuple[str, dict[str, Any]]]:
    """``batch`` with each attempt whose start and outcome are both in it written once:
    the start row with the outcome's columns, as an outcome (which inserts a row that
    is not there yet). One statement and one round of rollup triggers instead of two;
    the row that results is the same."""
    starts: dict[Any, int] = {}  # span_id -> position of its start row in out
    out: list[tuple[str, dict[str, Any]]] = []
    for kind, row in batch:
        span_id = row.get("span_id")
        if kind == "attempts:start" and span_id is not None and span_id not in starts:
            starts[span_id] = len(out)
        elif kind == "attempts:end" and span_id in starts:
            i = starts.pop(span_id)
            merged = dict(out[i][1])
            merged.update({c: row.get(c) for c in OUTCOME_COLUMNS})
            merged.pop(_JOURNALED, None)
            out[i] = ("attempts:end", merged)
            continue
        out.append((kind, row))
    return out


# A queued row: built, or a function the background thread calls to build it.
_Row = dict[str, Any] | Callable[[], Mapping[str, Any]]

# Connections that must never be closed: inherited across a fork (the parent still
# uses the file), or open on a store file that was deleted or replaced. Closing the
# last connection to a WAL database checkpoints it and unlinks "<path>-wal" by name,
# which could be the WAL of the parent's, or of the new, store. Keeping them
# referenced here stops the garbage collector from closing them; both events are rare.
_abandoned_connections: list[sqlite3.Connection] = []


_F = TypeVar("_F", bound=Callable[..., Any])


def _gated(method: _F) -> _F:
    """Run ``method`` inside the fork gate (``_forkgate.py``): it calls SQLite. Taken
    after any of our locks, never before one, so a fork never waits on a lock."""

    @functools.wraps(method)
    def inside(*args: Any, **kwargs: Any) -> Any:
        with GATE:
            return method(*args, **kwargs)

    return cast(_F, inside)


class _WriterState:
    """What every part of :class:`~local_store.StoreWriter` shares: its settings and
    the state that is fresh in every process (set by ``_init_process_state``).

    The parts are one object, split by role: the caller's hot path (``_hotpath``),
    the background indexer (``_indexer``) and the public face (``_writer``). A method
    one part calls and a later part defines is declared here.
    """

    path: Path
    service: str | None
    max_queue: int
    flush_interval_seconds: float
    hot_path_timeout_seconds: float
    hot_path_cooldown_seconds: float
    journal: bool
    writer_id: int | None
    _log: RateLimitedLog
    _closed: bool
    _pid: int
    _lock: threading.Lock
    _cond: threading.Condition
    _queue: deque[tuple[str, _Row]]
    _in_flight: int
    _batch_rows: int
    _bg_lock_since: float
    _hot_commits: int
    _bg_commits: int
    _last_checkpoint: float
    _upgrade_wanted: bool
    _journal: Journal
    _number_lock: threading.Lock
    _pending_numbers: dict[str, int]
    _read_conn: sqlite3.Connection | None
    _read_identity: tuple[int, int] | None
    _read_checked: float
    _next_orphan_check: float
    _next_judging: float
    _judging_wanted: bool
    _hot_conn: sqlite3.Connection | None
    _hot_identity: tuple[int, int] | None
    _hot_open_until: float
    _registered_in: tuple[int, int] | None
    _bg_conn: sqlite3.Connection | None
    _bg_identity: tuple[int, int] | None
    _thread: threading.Thread | None
    _stop: bool
    _flush_requests: int
    _flushed_through: int
    _pending_drops: dict[str, list[Any]]
    _totals: dict[str, int]

    def _reset_after_fork(self) -> None:
        raise NotImplementedError

    def count_drop(self, reason: str, n: int = 1, *, error: str | None = None) -> None:
        raise NotImplementedError

    def _count_locked(self, reason: str, n: int, error: str | None) -> None:
        raise NotImplementedError

    def _wake_background(self) -> None:
        raise NotImplementedError

    def _enqueue(self, kind: str, row: _Row) -> bool:
        raise NotImplementedError

    def _clean(self, table: str, row: dict[str, Any]) -> None:
        raise NotImplementedError

    def _start_thread(self) -> None:
        raise NotImplementedError
