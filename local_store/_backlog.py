"""The rows journaled and waiting for the indexer, the pacing of callers that outrun it,
and the counts of rows lost.

:meth:`Backlog.put` is the caller's side of the write path: it appends the row to the
journal (``_journal.py``) and queues it for the indexer, both under one lock, so the
journal's lines are in the queue's order. A queue of ``max_queue`` rows is full: a
row that finds it full is not journaled, and is counted as ``queue_full``. Once half
of it waits for the indexer, a caller waits (at most ``pace_seconds``) for a commit
to bring it back under half: a producer that outruns the store is slowed to the
store's pace instead of filling memory and dropping. While the indexer itself waits
for the store (locked by another process for long, read-only, gone, being upgraded),
it marks the backlog :attr:`~Backlog.stalled` and callers do not wait: rows queue
until the queue is full, and are retried when the store comes back.

A row the journal cannot take (a full or read-only disk) is still queued, and counted
as ``unjournaled``: it reaches the store unless the process dies first.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ._journal import Journal, JournalSegment
from ._ratelimit import RateLimitedLog
from ._storefile import now_ms

__all__ = ["Backlog", "Queued"]

# A queued row: its kind, the row, and the journal segment holding it (None if none).
Queued = tuple[str, dict[str, Any], JournalSegment | None]
# Drop counts waiting to be written: reason -> [count, first_at_ms, last_at_ms, error].
Drops = dict[str, list[Any]]


class Backlog:
    """The queue between callers and the indexer. Thread-safe."""

    def __init__(
        self, journal: Journal, log: RateLimitedLog, *, max_queue: int, pace_seconds: float,
    ) -> None:
        self.journal = journal
        self.max_queue = max_queue
        self._log = log
        self._pace_seconds = pace_seconds
        lock = threading.Lock()
        self.cond = threading.Condition(lock)  # the indexer waits on it for rows
        self._space = threading.Condition(lock)  # paced callers wait on it for a commit
        self.rows: deque[Queued] = deque()
        self.taken: list[Queued] = []  # rows taken by the indexer, not yet committed
        self.commits = 0  # the indexer's commits of rows, ever
        self.stalled = False  # the indexer waits for the store: callers do not wait
        self._drops: Drops = {}
        self._totals: dict[str, int] = {}
        # Called (holding the lock) after a row is queued or counted: starts the
        # indexer, or wakes it (for a full batch, or at once when urgent). Set by it.
        self.poke: Callable[[bool], None] = lambda urgent: None

    def put(self, kind: str, row: dict[str, Any]) -> bool:
        """Journal ``row`` and queue it; False when the full queue dropped it."""
        with self.cond:
            if self.over_half():
                self._pace()
            if len(self.rows) + len(self.taken) >= self.max_queue:
                self.count_locked("queue_full", 1, None)
                return False
            segment = self.journal.append(kind, row)
            if segment is None:
                self.count_locked("unjournaled", 1, None, lost=False)
            self.rows.append((kind, row, segment))
            self.poke(False)
        if segment is None:
            self._log.warning(
                "unjournaled", "otel-delivery cannot write its journal beside %s; rows are "
                "kept in memory until committed, and lost if the process dies first",
                self.journal.store,
            )
        return True

    def _pace(self) -> None:
        """Wait (holding the lock) for a commit to bring the queue under half."""
        if self.stalled or self._pace_seconds <= 0:
            return
        self._totals["paced"] = self._totals.get("paced", 0) + 1
        deadline = time.monotonic() + self._pace_seconds
        self.poke(True)
        while self.over_half() and not self.stalled:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._space.wait(left)

    def stall(self) -> None:
        """The indexer waits for the store: paced callers stop waiting for it."""
        with self.cond:
            self.stalled = True
            self._space.notify_all()

    def take(self, n: int) -> tuple[list[Queued], Drops]:
        """Up to ``n`` rows and the drop counts, for the indexer to commit."""
        with self.cond:
            taken = [self.rows.popleft() for _ in range(min(n, len(self.rows)))]
            self.taken = taken
            drops, self._drops = self._drops, {}
            return taken, drops

    def committed(self) -> bool:
        """The rows taken are committed; True when more wait."""
        with self.cond:
            self.taken = []
            self.commits += 1
            self.stalled = False
            self._space.notify_all()
            return bool(self.rows)

    def put_back(self, taken: list[Queued], drops: Drops) -> None:
        """The rows taken could not be committed: queue them first again, in order."""
        with self.cond:
            self.taken = []
            self.stalled = True
            self._space.notify_all()
            self.rows.extendleft(reversed(taken))
            for reason, (count, first, last, err) in drops.items():
                cur = self._drops.get(reason)
                if cur is None:
                    self._drops[reason] = [count, first, last, err]
                else:
                    cur[0] += count
                    cur[1] = min(cur[1], first)
            self._totals["write_errors"] = self._totals.get("write_errors", 0) + 1

    def count(self, reason: str, n: int = 1, error: str | None = None) -> None:
        with self.cond:
            self.count_locked(reason, n, error)
            self.poke(False)

    def count_locked(
        self, reason: str, n: int, error: str | None, *, lost: bool = True
    ) -> None:
        """Add ``n`` to ``reason``'s total; with ``lost``, also to the ``drops`` table."""
        self._totals[reason] = self._totals.get(reason, 0) + n
        if not lost:
            return
        t = now_ms()
        pending = self._drops.get(reason)
        if pending is None:
            self._drops[reason] = [n, t, t, error]
        else:
            pending[0] += n
            pending[2] = t
            if error is not None:
                pending[3] = error

    def over_half(self) -> bool:
        """Half the queue bound waits: callers are being paced."""
        return len(self.rows) + len(self.taken) >= self.max_queue // 2

    def idle(self) -> bool:
        """Nothing waits to be written (holding the lock)."""
        return not self.rows and not self.taken and not self._drops

    def stats(self) -> dict[str, int]:
        with self.cond:
            out = dict(self._totals)
            out["queued"] = len(self.rows) + len(self.taken)
        return out

    def add_total(self, reason: str, n: int) -> None:
        with self.cond:
            self._totals[reason] = self._totals.get(reason, 0) + n
