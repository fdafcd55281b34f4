"""Building stores for the query, prune and CLI tests, through the real StoreWriter.

Each helper writes what a decorated gateway would, with times given as "minutes
ago" from one fixed ``now_ms``, so a test knows every count independently of the
queries it checks.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from local_store import StoreWriter

MINUTE_MS = 60_000
DAY_MINUTES = 24 * 60

# What happens to a delivery, attempt by attempt:
# (status, error_type, failure_class, final). "started" is left open.
PLANS: dict[str, list[tuple[str, str | None, str | None, int | None]]] = {
    "delivered_first": [("delivered", None, None, None)],
    "delivered_after_retry": [
        ("failed", "TimedOut", "transient", 0),
        ("delivered", None, None, None),
    ],
    "failed_final": [
        ("failed", "TimedOut", "transient", 0),
        ("failed", "Forbidden", "permanent", 1),
    ],
    "pending_retry": [("failed", "TimedOut", "transient", 0)],
    "interrupted": [("interrupted", None, None, None)],
    "in_flight": [("started", None, None, None)],
}
# The final outcome each plan must be reported as.
PLAN_OUTCOME = {
    "delivered_first": "delivered",
    "delivered_after_retry": "delivered",
    "failed_final": "failed",
    "pending_retry": "pending_retry",
    "interrupted": "interrupted",
    "in_flight": "in_flight",
}
# The attempt status a reader reports for each written status (a live writer's
# fresh "started" row is in flight).
READ_STATUS = {"delivered": "delivered", "failed": "failed", "interrupted": "interrupted",
               "started": "in_flight"}


@dataclass(frozen=True)
class Message:
    trace_id: str
    inbound_id: str


class StoreBuilder:
    """Writes rows as of ``now_ms``; call :meth:`flush` before reading."""

    def __init__(self, path: Path, now_ms: int | None = None) -> None:
        self.path = path
        self.now_ms = now_ms if now_ms is not None else time.time_ns() // 1_000_000
        self.writer = StoreWriter(path, service="test-gateway")
        self._ids = itertools.count(1)

    def at(self, minutes_ago: float) -> int:
        return self.now_ms - int(minutes_ago * MINUTE_MS)

    def _next(self) -> int:
        return next(self._ids)

    def new_trace(self) -> str:
        return f"{self._next():032x}"

    def _span(self) -> str:
        return f"{self._next():016x}"

    def message(
        self,
        *,
        channel: str = "telegram",
        minutes_ago: float = 10,
        reply: bool | None = True,
        run_failed: bool = False,
        inbound_id: str | None = None,
        with_run: bool = True,
        with_inbound: bool = True,
    ) -> Message:
        """An inbound message and (unless ``with_run=False``) its AI run."""
        trace_id = self.new_trace()
        inbound_id = inbound_id or f"in-{trace_id[-6:]}"
        received = self.at(minutes_ago)
        if with_inbound:
            self.writer.submit("inbound_messages", {
                "trace_id": trace_id, "span_id": self._span(), "inbound_id": inbound_id,
                "channel": channel, "status": "ok", "received_at_ms": received,
                "ended_at_ms": received + 2_000,
            })
        if with_run:
            failed = run_failed
            self.writer.submit("ai_runs", {
                "trace_id": trace_id, "span_id": self._span(), "inbound_id": inbound_id,
                "channel": channel, "agent": "helper", "model": "test-model",
                "status": "failed" if failed else "ok",
                "error_type": "RateLimitError" if failed else None,
                "error_text": "model overloaded" if failed else None,
                "reply_produced": None if reply is None else int(reply),
                "started_at_ms": received + 100, "ended_at_ms": received + 1_000,
                "duration_ms": 900.0,
            })
        return Message(trace_id, inbound_id)

    def attempt(
        self,
        trace_id: str,
        delivery_id: str,
        *,
        status: str,
        minutes_ago: float,
        channel: str = "telegram",
        error_type: str | None = None,
        error_text: str | None = None,
        failure_class: str | None = None,
        final: int | None = None,
        max_attempts: int | None = None,
        inbound_id: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> str:
        """One attempt, started and (unless ``status="started"``) ended; its span id."""
        started = self.at(minutes_ago)
        row: dict[str, Any] = {
            "delivery_id": delivery_id, "trace_id": trace_id, "span_id": self._span(),
            "channel": channel, "recipient": "chat-1", "started_at_ms": started,
            "max_attempts": max_attempts, "inbound_id": inbound_id, **(extra or {}),
        }
        self.writer.start_attempt({**row, "status": "started"})
        if status != "started":
            if error_type is not None and error_text is None:
                error_text = f"{error_type} from the channel API"
            self.writer.end_attempt({
                **row, "status": status, "error_type": error_type, "error_text": error_text,
                "failure_class": failure_class, "final": final,
                "ended_at_ms": started + 500, "duration_ms": 500.0,
            })
        return str(row["span_id"])

    def enqueue(
        self,
        trace_id: str,
        delivery_id: str | None,
        *,
        minutes_ago: float,
        failed: bool = False,
        channel: str = "telegram",
        inbound_id: str | None = None,
    ) -> None:
        started = self.at(minutes_ago)
        self.writer.submit("enqueues", {
            "trace_id": trace_id, "span_id": self._span(), "delivery_id": delivery_id,
            "inbound_id": inbound_id, "channel": channel, "recipient": "chat-1",
            "status": "failed" if failed else "ok",
            "error_type": "QueueFull" if failed else None,
            "error_text": "spool directory is full" if failed else None,
            "started_at_ms": started, "ended_at_ms": started + 20,
        })

    def delivery(
        self, plan: str, *, channel: str = "telegram", minutes_ago: float = 30,
        message: Message | None = None,
    ) -> tuple[Message, str]:
        """A message whose reply goes through ``PLANS[plan]``, one minute per attempt."""
        message = message or self.message(channel=channel, minutes_ago=minutes_ago + 1)
        delivery_id = f"d-{self._next()}"
        for i, (status, error_type, failure_class, final) in enumerate(PLANS[plan]):
            self.attempt(
                message.trace_id, delivery_id, status=status, minutes_ago=minutes_ago - i,
                channel=channel, error_type=error_type, failure_class=failure_class,
                final=final, inbound_id=message.inbound_id,
            )
        return message, delivery_id

    def flush(self) -> None:
        if not self.writer.flush(10):
            raise AssertionError(f"rows not written: {self.writer.stats()}")

    def close(self) -> None:
        self.writer.close()


def undelivered_judged_now(db: Any, **kwargs: Any) -> Any:
    """``local_store.undelivered(db, **kwargs)`` with every pending reply judged when
    asked instead of read from its kept verdict: the answer the kept verdicts must
    give. The store is left as it was."""
    from local_store import undelivered

    db.execute("SAVEPOINT judged_now")
    try:
        db.execute(
            "INSERT INTO traces_to_judge (trace_id) SELECT trace_id FROM ai_runs "
            "WHERE reply_pending = 1 ON CONFLICT DO NOTHING"
        )
        return undelivered(db, **kwargs)
    finally:
        db.execute("ROLLBACK TO judged_now")
        db.execute("RELEASE judged_now")
