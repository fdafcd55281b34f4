"""Keeping ``os.fork()`` from copying a thread of ours halfway through a SQLite call.

A forked child has one thread, but a copy of every lock the parent's other threads
held at that instant: SQLite's global mutexes (taken inside ``sqlite3.connect``), and
its in-process record of the file locks a connection holds while in a transaction.
A child that forks while a writer's thread is inside either then waits for ever, in
``connect`` or for a write lock no one in the child will release.

So every SQLite call of a writer's threads runs inside :data:`GATE`, and a fork
(``os.register_at_fork``) closes the gate first: new calls wait, the fork waits until
the calls under way have returned, then proceeds with no thread of ours in SQLite.
The parent opens the gate again; the child starts with a fresh one. A call that takes
long (an upgrade of a large store, a wait for another process's lock) delays a fork
by at most :data:`FORK_WAIT_SECONDS`, after which the fork goes ahead regardless.
"""

from __future__ import annotations

import os
import threading
import time
from types import TracebackType

__all__ = ["FORK_WAIT_SECONDS", "GATE", "ForkGate"]

FORK_WAIT_SECONDS = 5.0


class ForkGate:
    """A count of threads inside SQLite that a fork waits to reach zero. Re-entrant."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._inside = 0
        self._forking = False
        self._local = threading.local()

    def __enter__(self) -> None:
        depth = getattr(self._local, "depth", 0)
        if depth == 0:
            with self._cond:
                while self._forking:
                    self._cond.wait()
                self._inside += 1
        self._local.depth = depth + 1

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        depth = self._local.depth - 1
        self._local.depth = depth
        if depth == 0:
            with self._cond:
                self._inside -= 1
                if self._inside == 0:
                    self._cond.notify_all()

    def before_fork(self) -> None:
        """Close the gate and wait for the calls under way; the lock stays held
        through the fork, so no thread can enter meanwhile."""
        self._cond.acquire()
        self._forking = True
        own = 1 if getattr(self._local, "depth", 0) else 0  # a fork from inside a call
        deadline = time.monotonic() + FORK_WAIT_SECONDS
        while self._inside > own:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._cond.wait(left)

    def after_fork_in_parent(self) -> None:
        self._forking = False
        self._cond.notify_all()
        self._cond.release()

    def after_fork_in_child(self) -> None:
        # The parent's threads, and their counts, are not in the child.
        self._reset()


GATE = ForkGate()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=GATE.before_fork,
        after_in_parent=GATE.after_fork_in_parent,
        after_in_child=GATE.after_fork_in_child,
    )
