"""A durable delivery queue whose retries survive restarts and stay in their trace.

The gateway's own queue, in one SQLite file (not the otel-delivery store: it holds
the reply text the sender needs, which the store never does). Each entry keeps the
trace context captured by :func:`otel_delivery.carry` when it was queued, so an
attempt made hours later, by another process, joins the original trace, links to the
earlier attempts, and gets the next attempt number from the store's rows.

Nothing is ever read, changed and written back: an entry is inserted once, and every
attempt appends events (``started``, ``sending``, then ``delivered`` / ``retry`` /
``dead``). Its state, its attempt count and its latest carrier are read from those
events, so a crash at any point loses at most the outcome of the attempt in flight,
which the next run sees as interrupted and counts.

One consumer per queue file. Wire it like this (the decorator line is yours, so the
attempt's span has your channel's names)::

    queue = DurableQueue("/var/lib/gateway/outbox.db", max_attempts=5)

    @otel_delivery.enqueue(channel=arg("channel"), delivery_id=arg("delivery_id"))
    def enqueue_reply(delivery_id: str, channel: str, chat: str, text: str) -> None:
        queue.put(delivery_id, channel=channel, recipient=chat, payload={"text": text})

    @otel_delivery.deliver(channel=arg("item.channel"), recipient=arg("item.recipient"),
                           delivery_id=arg("item.id"), max_attempts=arg("item.max_attempts"),
                           carrier=arg("item.trace"))
    def attempt(item: QueuedDelivery) -> dict:
        queue.checkpoint(item)   # before the send: a crash mid-send is still linked
        return slack.chat_postMessage(channel=item.recipient, text=item.payload["text"]).data

    queue.run_due(attempt)       # in the sender loop, and once after every start-up
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from local_store._fs import make_private_dirs

from .._chat_libraries import retry_after_seconds
from .._classify import Classifier, default_classifier
from .._propagation import carry

__all__ = ["DurableQueue", "Outcome", "QueuedDelivery"]

Outcome = Literal["delivered", "retry", "dead"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    channel TEXT NOT NULL,
    recipient TEXT NOT NULL,
    payload TEXT NOT NULL,
    trace TEXT NOT NULL,
    max_attempts INTEGER NOT NULL,
    queued_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS delivery_events (
    id INTEGER PRIMARY KEY,
    delivery_id TEXT NOT NULL REFERENCES deliveries (id),
    event TEXT NOT NULL,
    trace TEXT,
    due_at_ms INTEGER,
    error TEXT,
    at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_delivery_events ON delivery_events (delivery_id, id);
"""

# The latest event of each entry that is not finished, with its attempt count and
# latest carrier, all derived from the appended events.
_OPEN_SQL = """
SELECT
    d.id, d.channel, d.recipient, d.payload, d.max_attempts, d.queued_at_ms,
    COALESCE(
        (SELECT e.trace FROM delivery_events e
         WHERE e.delivery_id = d.id AND e.trace IS NOT NULL ORDER BY e.id DESC LIMIT 1),
        d.trace
    ) AS trace,
    (SELECT COUNT(*) FROM delivery_events e
     WHERE e.delivery_id = d.id AND e.event = 'started') AS attempts,
    last.event AS last_event,
    last.due_at_ms AS due_at_ms
FROM deliveries d
LEFT JOIN delivery_events last ON last.id = (
    SELECT MAX(e.id) FROM delivery_events e WHERE e.delivery_id = d.id
)
WHERE last.event IS NULL OR last.event NOT IN ('delivered', 'dead')
ORDER BY d.queued_at_ms, d.rowid  -- put order for entries queued in the same ms
"""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class QueuedDelivery:
    """One reply waiting to be delivered, as the sender's attempt function sees it."""

    id: str
    channel: str
    recipient: str
    payload: dict[str, Any]
    #: The carrier: give it to ``@deliver(carrier=arg("item.trace"))``.
    trace: dict[str, str]
    max_attempts: int
    #: Attempts already started before this one (crashed ones included).
    attempts: int
    queued_at_ms: int


class DurableQueue:
    """A delivery queue in one SQLite file that keeps each entry's trace context.

    ``max_attempts`` bounds the attempts per entry (a crashed attempt counts);
    transient failures wait ``backoff_seconds * 2 ** (attempts - 1)`` (at most
    ``max_backoff_seconds``) or the wait the service asked for, whichever is longer;
    a permanent failure, by ``classifier``, ends the entry at once. Entries older
    than ``expire_after_seconds`` are not sent any more: a reply a week late is worse
    than none.

    >>> queue = DurableQueue("/var/lib/gateway/outbox.db")  # doctest: +SKIP
    >>> item = queue.put("dlv-1", channel="slack", recipient="C1",
    ...                  payload={"text": "hi"})  # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_attempts: int = 5,
        backoff_seconds: float = 2.0,
        max_backoff_seconds: float = 300.0,
        expire_after_seconds: float | None = 24 * 3600.0,
        classifier: Classifier = default_classifier,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        if backoff_seconds < 0 or max_backoff_seconds < 0:
            raise ValueError("backoff_seconds and max_backoff_seconds must not be negative")
        self.path = Path(path)
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.expire_after_seconds = expire_after_seconds
        self.classifier = classifier
        # It holds reply texts: owner-only, like the store (WAL and SHM inherit the mode).
        make_private_dirs(self.path.parent)  # each new parent 0700, whatever the umask
        os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        self._conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> DurableQueue:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- producing -----------------------------------------------------------------------

    def put(
        self,
        delivery_id: str,
        *,
        channel: str,
        recipient: str,
        payload: Mapping[str, Any],
        max_attempts: int | None = None,
    ) -> QueuedDelivery:
        """Queue a reply, with the current trace context; due at once.

        Call it inside the span that produced the reply (the AI run, or an
        ``@enqueue`` function): retries become children of that span.
        """
        trace = carry()
        limit = max_attempts or self.max_attempts
        now = _now_ms()
        self._conn.execute(
            "INSERT INTO deliveries (id, channel, recipient, payload, trace, max_attempts, "
            "queued_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (delivery_id, channel, recipient, json.dumps(dict(payload)), json.dumps(trace),
             limit, now),
        )
        return QueuedDelivery(delivery_id, channel, recipient, dict(payload), trace, limit, 0,
                              now)

    # -- consuming -----------------------------------------------------------------------

    def due(self, *, now_ms: int | None = None, limit: int = 100) -> list[QueuedDelivery]:
        """Entries whose next attempt is due, oldest first.

        An entry whose last attempt never reported back (its process died) is due at
        once, unless that was its last allowed attempt or it has expired: then it is
        ended as ``dead`` here, with the reason.
        """
        now = _now_ms() if now_ms is None else now_ms
        items: list[QueuedDelivery] = []
        for row in self._conn.execute(_OPEN_SQL).fetchall():
            (delivery_id, channel, recipient, payload, max_attempts, queued_at_ms, trace,
             attempts, last_event, due_at_ms) = row
            crashed = last_event in ("started", "sending")
            if self._expired(queued_at_ms, now):
                self._append(delivery_id, "dead", None, error="expired before delivery")
                continue
            if crashed and attempts >= max_attempts:
                self._append(delivery_id, "dead", None,
                             error="interrupted on the last allowed attempt")
                continue
            if last_event == "retry" and due_at_ms is not None and due_at_ms > now:
                continue
            items.append(QueuedDelivery(
                delivery_id, channel, recipient, json.loads(payload), json.loads(trace),
                max_attempts, attempts, queued_at_ms,
            ))
            if len(items) >= limit:
                break
        return items

    def checkpoint(self, item: QueuedDelivery) -> None:
        """Save ``item.trace`` now; call it in your ``@deliver`` function before the send.

        The decorator has just added this attempt's span id to the carrier, so if the
        process dies during the send, the next attempt still links to this one.
        """
        self._append(item.id, "sending", item.trace)

    def record(
        self, item: QueuedDelivery, error: BaseException | None, *, now_ms: int | None = None
    ) -> Outcome:
        """Append the outcome of the attempt just made, and say what happens next."""
        if error is None:
            self._append(item.id, "delivered", item.trace)
            return "delivered"
        now = _now_ms() if now_ms is None else now_ms
        attempts = item.attempts + 1
        text = f"{type(error).__name__}: {error}"[:512]
        try:
            permanent = self.classifier(error) == "permanent"
        except Exception:
            permanent = False
        if permanent or attempts >= item.max_attempts:
            self._append(item.id, "dead", item.trace, error=text)
            return "dead"
        wait = min(self.backoff_seconds * 2 ** (attempts - 1), self.max_backoff_seconds)
        hint = retry_after_seconds(error)
        if hint is not None:
            wait = max(wait, hint)
        self._append(item.id, "retry", item.trace, due_at_ms=now + int(wait * 1000), error=text)
        return "retry"

    def run_due(
        self,
        attempt: Callable[[QueuedDelivery], Any],
        *,
        now_ms: int | None = None,
        limit: int = 100,
    ) -> dict[str, Outcome]:
        """Make one attempt for every due entry; return each entry's outcome.

        ``attempt`` is your ``@deliver``-decorated function: it makes one attempt and
        raises on failure. Exceptions other than ``Exception`` (KeyboardInterrupt,
        cancellation) propagate, leaving the attempt to be seen as interrupted.
        """
        outcomes: dict[str, Outcome] = {}
        for item in self.due(now_ms=now_ms, limit=limit):
            self._append(item.id, "started", item.trace)
            try:
                attempt(item)
            except Exception as exc:
                outcomes[item.id] = self.record(item, exc, now_ms=now_ms)
            else:
                outcomes[item.id] = self.record(item, None, now_ms=now_ms)
        return outcomes

    def state(self, delivery_id: str) -> str | None:
        """The entry's last event (``started``, ``sending``, ``retry``, ``delivered``,
        ``dead``), ``"queued"`` before any attempt, or None for an unknown id."""
        row = self._conn.execute(
            "SELECT d.id, (SELECT event FROM delivery_events e WHERE e.delivery_id = d.id "
            "ORDER BY e.id DESC LIMIT 1) FROM deliveries d WHERE d.id = ?",
            (delivery_id,),
        ).fetchone()
        if row is None:
            return None
        return str(row[1]) if row[1] is not None else "queued"

    # -- internals -----------------------------------------------------------------------

    def _expired(self, queued_at_ms: int, now_ms: int) -> bool:
        if self.expire_after_seconds is None:
            return False
        return now_ms - queued_at_ms > self.expire_after_seconds * 1000

    def _append(
        self,
        delivery_id: str,
        event: str,
        trace: Mapping[str, str] | None,
        *,
        due_at_ms: int | None = None,
        error: str | None = None,
    ) -> None:
        self._conn.execute(
            "INSERT INTO delivery_events (delivery_id, event, trace, due_at_ms, error, at_ms) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (delivery_id, event, json.dumps(dict(trace)) if trace is not None else None,
             due_at_ms, error, _now_ms()),
        )
