"""The gateway's retrying delivery queue, persisted as a JSON-lines file.

Every pending entry is rewritten to the file after each change, the way the seed
gateway keeps one file per queued reply, so a new queue instance (after a restart)
picks up where the old one stopped. Each entry carries its trace context
(``entry["trace"]``), captured when it was enqueued: a retry hands it to
``@deliver(carrier=...)`` and joins the original trace, even after the restart.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import otel_delivery
from otel_delivery import arg

from .messages import Reply

__all__ = ["DeliveryQueue", "Entry", "SimClock"]

#: One queued delivery, exactly as it is stored in the file.
Entry = dict[str, Any]


class SimClock:
    """Unix seconds that move only when told to.

    Real backoffs (a 1 s retry-after, 30 s after a timeout) would make the demo slow
    and its interleaving depend on the machine. The queue asks this clock instead, and
    the demo moves it forward whenever every task is idle, so a seed always plays
    out the same way.
    """

    def __init__(self, start: float) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance_to(self, when: float) -> None:
        self._now = max(self._now, when)


class DeliveryQueue:
    """Pending replies, due times and retry counts; one file, rewritten on each change.

    >>> queue = DeliveryQueue(Path("queue.jsonl"), SimClock(0.0))  # doctest: +SKIP
    >>> queue.enqueue(reply)  # doctest: +SKIP
    'dlv-tg-1a2b-003'
    """

    def __init__(self, path: Path, clock: SimClock, *, max_attempts: int = 3) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        self.path = path
        self.clock = clock
        self.max_attempts = max_attempts
        self._entries: dict[str, Entry] = {}
        self._in_flight: set[str] = set()
        self._closed = False
        self._changed = asyncio.Event()
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    entry = json.loads(line)
                    self._entries[entry["id"]] = entry

    # -- producer side -------------------------------------------------------------

    @otel_delivery.enqueue(
        channel=arg("reply.channel"),
        recipient=arg("reply.recipient"),
        delivery_id=arg("reply.delivery_id"),
        carrier=arg("reply.metadata"),
    )
    def enqueue(self, reply: Reply) -> str:
        """Persist ``reply`` for delivery; return its delivery id. Raises when it cannot."""
        now = self.clock.now()
        entry: Entry = {
            "id": reply.delivery_id,
            "inbound_id": reply.inbound_id,
            "channel": reply.channel,
            "recipient": reply.recipient,
            "text": reply.text,
            "attempts": 0,
            "max_attempts": self.max_attempts,
            "enqueued_at": now,
            "next_attempt_at": now,
            "last_error": None,
            "trace": otel_delivery.carry(),
        }
        if reply.attachment is not None:
            entry["attachment"] = reply.attachment
        self._write({**self._entries, entry["id"]: entry})
        self._entries[entry["id"]] = entry
        self._changed.set()
        return reply.delivery_id

    # -- sender side ------------------------------------------------------------------

    async def next_due(self, channel: str) -> Entry | None:
        """The next entry for ``channel`` whose time has come; None once closed."""
        while True:
            if self._closed:
                return None
            due = self._due(channel)
            if due:
                entry = min(due, key=lambda e: (e["next_attempt_at"], e["enqueued_at"], e["id"]))
                self._in_flight.add(entry["id"])
                return entry
            self._changed.clear()
            await self._changed.wait()

    def delivered(self, entry: Entry) -> None:
        """The attempt went through: the entry leaves the queue."""
        self._finish(entry, remove=True)

    def failed(self, entry: Entry, error: BaseException, *, retry_at: float | None) -> None:
        """The attempt failed: keep the entry for ``retry_at``, or drop it (None)."""
        entry["attempts"] += 1
        entry["last_error"] = f"{type(error).__name__}: {error}"
        if retry_at is not None:
            entry["next_attempt_at"] = retry_at
        self._finish(entry, remove=retry_at is None)

    def _finish(self, entry: Entry, *, remove: bool) -> None:
        # entry["trace"] now also lists the span of the attempt that just ended
        # (@deliver appended it), so writing the entry back lets the next attempt,
        # even in a new process, link to this one.
        entries = dict(self._entries)
        if remove:
            entries.pop(entry["id"], None)
        self._write(entries)
        self._entries = entries
        self._in_flight.discard(entry["id"])
        self._changed.set()

    # -- supervision ----------------------------------------------------------------------

    def pending(self) -> list[Entry]:
        return list(self._entries.values())

    def next_due_at(self) -> float | None:
        """When the earliest entry not yet due becomes due, or None when there is none."""
        now = self.clock.now()
        later = [e["next_attempt_at"] for e in self._entries.values() if e["next_attempt_at"] > now]
        return min(later, default=None)

    async def wait_idle(self) -> None:
        """Return once nothing is being sent and nothing is due."""
        while self._in_flight or self._due(None):
            self._changed.clear()
            await self._changed.wait()

    def wake(self) -> None:
        """Tell waiting senders to look again (the clock moved)."""
        self._changed.set()

    def close(self) -> None:
        """Stop handing out entries; what is pending stays in the file."""
        self._closed = True
        self._changed.set()

    def _due(self, channel: str | None) -> list[Entry]:
        now = self.clock.now()
        return [
            e for e in self._entries.values()
            if e["next_attempt_at"] <= now
            and e["id"] not in self._in_flight
            and (channel is None or e["channel"] == channel)
        ]

    def _write(self, entries: dict[str, Entry]) -> None:
        # Serialise everything before touching the file, so a reply that cannot be
        # stored fails its own enqueue and leaves the other entries intact.
        text = "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries.values())
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, self.path)
