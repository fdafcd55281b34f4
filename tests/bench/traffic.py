"""Synthetic gateway traffic, and two ways to put it in a store.

:func:`messages` models a month of a gateway's traffic: 8 channels of unequal volume,
one inbound message, one AI run, one enqueue and one or more delivery attempts per
message, about 5% of attempts failing (transient retries, permanent errors, a few
interrupted sends), a few runs with no reply and a few swallowed enqueue failures.

The same :class:`Message` can be written two ways:

* :class:`Gateway` runs it through the **real write path**: functions decorated with
  ``otel_delivery.inbound / ai_run / enqueue / deliver``, a real SDK TracerProvider
  and ``otel_delivery.configure(store=...)`` (so the span processor and the store's
  writer produce the rows). With a :class:`FakeClock` and :class:`ScriptedIds` the
  spans get exactly the model's times and ids.
* :class:`BulkWriter` is the **documented bulk path** for building 1M-10M-attempt
  stores in minutes: it writes the rows the real path would produce (one final row
  per attempt, the other tables as the processor maps them) straight into a store
  created by ``local_store.open_store`` (same schema, same migrations, same pragmas),
  with ``executemany`` in large transactions. ``tests/test_bench_smoke.py`` checks
  that both ways give identical rows for the same messages.

Ids are random like the SDK's (128-bit trace ids, 64-bit span ids, UUID-like
delivery ids) so indexes see the key distribution real traffic gives them.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace.id_generator import IdGenerator

import otel_delivery
from local_store import open_store
from local_store._ids import ID_COLUMNS, pack
from local_store._verdicts import refresh_verdicts
from local_store._writer import TABLE_COLUMNS
from otel_delivery import arg

DAY_MS = 86_400_000
SERVICE = "bench-gateway"
AGENT = "assistant"
MODEL = "bench-model"
MAX_ATTEMPTS = 3

# Channel -> share of traffic (a gateway's channels are never equally busy).
CHANNELS: dict[str, int] = {
    "telegram": 30, "whatsapp": 20, "slack": 15, "discord": 12,
    "signal": 8, "email": 6, "teams": 5, "matrix": 4,
}


# -- the errors a channel API raises ------------------------------------------------------


class ChannelError(Exception):
    pass


class TimedOut(ChannelError):
    pass


class RetryAfter(ChannelError):
    pass


class Forbidden(ChannelError):
    pass


class BadRequest(ChannelError):
    pass


class QueueFull(Exception):
    pass


class ModelOverloaded(Exception):
    pass


for _cls in (ChannelError, TimedOut, RetryAfter, Forbidden, BadRequest, QueueFull,
             ModelOverloaded):
    # error.type is the qualified class name; make it read like a gateway's own.
    _cls.__module__ = "gateway.errors"


@dataclass(frozen=True)
class ErrorKind:
    exc_type: type[BaseException]
    text: str
    failure_class: str | None  # what the decorator records (default classifier)

    @property
    def error_type(self) -> str:
        return f"{self.exc_type.__module__}.{self.exc_type.__qualname__}"


TRANSIENT = (
    ErrorKind(TimedOut, "Timed out", "transient"),
    ErrorKind(RetryAfter, "Flood control exceeded. Retry in 7 seconds", "transient"),
)
PERMANENT = (
    ErrorKind(Forbidden, "Forbidden: bot was blocked by the user", "permanent"),
    ErrorKind(BadRequest, "Bad Request: chat not found", "permanent"),
)
# Cancelled mid-send: the decorator records neither a failure class nor finality.
INTERRUPTED = ErrorKind(asyncio.CancelledError, "", None)
ENQUEUE_FAILURE = ErrorKind(QueueFull, "spool directory is full", None)
RUN_FAILURE = ErrorKind(ModelOverloaded, "model overloaded", None)

# What happens to a reply, per delivery (percent): outcomes of its attempts in order.
DELIVERY_PLANS: tuple[tuple[float, tuple[str, ...]], ...] = (
    (95.6, ("delivered",)),
    (2.2, ("transient", "delivered")),
    (0.7, ("transient", "transient", "transient")),  # failed for good at max_attempts
    (1.1, ("permanent",)),
    (0.4, ("interrupted", "delivered")),
)
NO_REPLY_PERCENT = 0.5
RUN_FAILED_PERCENT = 0.2
ENQUEUE_FAILED_PERCENT = 0.1


@dataclass(frozen=True)
class Attempt:
    span_id: int
    started_ms: int
    duration_ms: int
    outcome: str  # delivered | transient | permanent | interrupted
    error: ErrorKind | None

    @property
    def status(self) -> str:
        if self.outcome in ("transient", "permanent"):
            return "failed"
        return self.outcome


@dataclass(frozen=True)
class Message:
    seq: int
    trace_id: int
    channel: str
    inbound_id: str
    sender: str
    conversation: str
    received_ms: int
    inbound_span: int
    inbound_ms: int
    run_span: int
    run_started_ms: int
    run_ms: int
    run_outcome: str  # reply | no_reply | failed
    enqueue_span: int | None
    enqueue_started_ms: int
    enqueue_failed: bool
    delivery_id: str | None
    attempts: tuple[Attempt, ...]

    def span_ids(self) -> list[int]:
        """Span ids in the order the real path asks the SDK for them."""
        ids = [self.inbound_span, self.run_span]
        if self.enqueue_span is not None:
            ids.append(self.enqueue_span)
        ids.extend(a.span_id for a in self.attempts)
        return ids


ATTEMPTS_PER_MESSAGE = (
    (100 - NO_REPLY_PERCENT - RUN_FAILED_PERCENT) / 100
    * (1 - ENQUEUE_FAILED_PERCENT / 100)
    * sum(p * len(plan) for p, plan in DELIVERY_PLANS) / sum(p for p, _ in DELIVERY_PLANS)
)


def messages_for_attempts(attempts: int) -> int:
    """How many messages give about ``attempts`` delivery attempts."""
    return max(1, round(attempts / ATTEMPTS_PER_MESSAGE))


def messages(
    count: int, *, end_ms: int, days: float = 30, seed: int = 4, users: int = 100_000
) -> Iterator[Message]:
    """``count`` messages spread evenly over ``days`` ending at ``end_ms``, oldest first."""
    rng = random.Random(seed)
    channels = list(CHANNELS)
    weights = list(CHANNELS.values())
    plans = [plan for _, plan in DELIVERY_PLANS]
    plan_weights = [p for p, _ in DELIVERY_PLANS]
    span_ms = int(days * DAY_MS)
    start_ms = end_ms - span_ms
    step = span_ms / count
    for seq in range(count):
        channel = rng.choices(channels, weights)[0]
        user = rng.randrange(users)
        received = start_ms + int(seq * step + rng.random() * step * 0.5)
        inbound_ms = rng.randint(1, 20)
        run_started = received + inbound_ms + rng.randint(0, 50)
        run_ms = rng.randint(400, 8_000)
        roll = rng.random() * 100
        if roll < RUN_FAILED_PERCENT:
            run_outcome = "failed"
        elif roll < RUN_FAILED_PERCENT + NO_REPLY_PERCENT:
            run_outcome = "no_reply"
        else:
            run_outcome = "reply"
        trace_id = rng.getrandbits(128) or 1
        inbound_span = rng.getrandbits(64) or 1
        run_span = rng.getrandbits(64) or 1
        enqueue_span = None
        enqueue_started = run_started + run_ms
        enqueue_failed = False
        delivery_id = None
        attempts: list[Attempt] = []
        if run_outcome == "reply":
            enqueue_span = rng.getrandbits(64) or 1
            delivery_id = f"{rng.getrandbits(128):032x}"
            enqueue_failed = rng.random() * 100 < ENQUEUE_FAILED_PERCENT
            if not enqueue_failed:
                at = enqueue_started + rng.randint(5, 200)
                for outcome in rng.choices(plans, plan_weights)[0]:
                    if outcome == "transient":
                        error: ErrorKind | None = rng.choice(TRANSIENT)
                    elif outcome == "permanent":
                        error = rng.choice(PERMANENT)
                    elif outcome == "interrupted":
                        error = INTERRUPTED
                    else:
                        error = None
                    duration = rng.randint(30, 1_500)
                    attempts.append(
                        Attempt(rng.getrandbits(64) or 1, at, duration, outcome, error)
                    )
                    at += duration + rng.randint(10_000, 120_000)  # the queue's backoff
        yield Message(
            seq=seq, trace_id=trace_id, channel=channel, inbound_id=f"{channel[:2]}-{seq}",
            sender=f"{channel}:{user}", conversation=f"{channel}:{user}",
            received_ms=received, inbound_ms=inbound_ms, inbound_span=inbound_span,
            run_span=run_span, run_started_ms=run_started, run_ms=run_ms,
            run_outcome=run_outcome, enqueue_span=enqueue_span,
            enqueue_started_ms=enqueue_started, enqueue_failed=enqueue_failed,
            delivery_id=delivery_id, attempts=tuple(attempts),
        )


# -- the bulk path --------------------------------------------------------------------------


def _hex16(n: int) -> str:
    return f"{n:016x}"


def rows_of(
    m: Message, *, service: str | None, writer_id: int | None
) -> dict[str, list[dict[str, Any]]]:
    """The rows the real path writes for ``m``, by table (columns not named are NULL)."""
    trace = f"{m.trace_id:032x}"
    inbound_span = _hex16(m.inbound_span)
    run_span = _hex16(m.run_span)
    out: dict[str, list[dict[str, Any]]] = {
        "inbound_messages": [{
            "trace_id": trace, "span_id": inbound_span, "inbound_id": m.inbound_id,
            "channel": m.channel, "sender": m.sender, "conversation": m.conversation,
            "status": "ok", "received_at_ms": m.received_ms,
            "ended_at_ms": m.received_ms + m.inbound_ms, "service": service,
        }],
        "ai_runs": [], "enqueues": [], "attempts": [],
    }
    failed_run = m.run_outcome == "failed"
    out["ai_runs"].append({
        "trace_id": trace, "span_id": run_span, "parent_span_id": inbound_span,
        "inbound_id": m.inbound_id, "channel": m.channel, "agent": AGENT, "model": MODEL,
        "conversation": m.conversation, "status": "failed" if failed_run else "ok",
        "error_type": RUN_FAILURE.error_type if failed_run else None,
        "error_text": RUN_FAILURE.text if failed_run else None,
        "reply_produced": None if failed_run else int(m.run_outcome == "reply"),
        "started_at_ms": m.run_started_ms, "ended_at_ms": m.run_started_ms + m.run_ms,
        "duration_ms": float(m.run_ms), "service": service,
    })
    if m.enqueue_span is not None:
        failed = m.enqueue_failed
        out["enqueues"].append({
            "trace_id": trace, "span_id": _hex16(m.enqueue_span), "parent_span_id": run_span,
            "delivery_id": m.delivery_id, "inbound_id": m.inbound_id, "channel": m.channel,
            "recipient": m.sender, "status": "failed" if failed else "ok",
            "error_type": ENQUEUE_FAILURE.error_type if failed else None,
            "error_text": ENQUEUE_FAILURE.text if failed else None,
            "started_at_ms": m.enqueue_started_ms,
            "ended_at_ms": m.enqueue_started_ms + ENQUEUE_MS, "service": service,
        })
    for number, a in enumerate(m.attempts, start=1):
        err = a.error
        if a.outcome in ("delivered", "permanent"):
            final: int | None = 1
        elif a.outcome == "transient":
            final = int(number >= MAX_ATTEMPTS)
        else:
            final = None
        out["attempts"].append({
            "delivery_id": m.delivery_id, "attempt": number, "max_attempts": MAX_ATTEMPTS,
            "trace_id": trace, "span_id": _hex16(a.span_id), "parent_span_id": run_span,
            "inbound_id": m.inbound_id, "channel": m.channel, "recipient": m.sender,
            "status": a.status,
            "error_type": err.error_type if err else None,
            "error_text": err.text if err else None,
            "failure_class": err.failure_class if err else None, "final": final,
            "started_at_ms": a.started_ms, "ended_at_ms": a.started_ms + a.duration_ms,
            "duration_ms": float(a.duration_ms),
            "provider_message_id": (
                provider_message_id(m, number) if a.outcome == "delivered" else None
            ),
            "service": service, "writer_id": writer_id,
        })
    return out


ENQUEUE_MS = 2


def provider_message_id(m: Message, attempt: int) -> str:
    return f"pm-{m.seq}-{attempt}"


_INSERT = {
    table: f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    for table, cols in TABLE_COLUMNS.items()
}


class BulkWriter:
    """Writes messages' rows straight into a store (see the module docstring).

    The store is created by ``open_store`` exactly as a gateway creates it; the writer
    registers itself in ``writers`` like a ``StoreWriter`` does, and judges the pending
    replies' verdicts after each batch as its background thread does. ``synchronous=OFF``
    and a large page cache only change how fast the file is built, not what is in it.

    >>> with BulkWriter(path) as bulk:  # doctest: +SKIP
    ...     bulk.write(messages(1000, end_ms=now))
    """

    def __init__(self, path: Path, *, service: str | None = SERVICE,
                 cache_mib: int = 4096, batch_messages: int = 100_000) -> None:
        self.path = path
        self.service = service
        self.batch_messages = batch_messages
        self.db = open_store(path, create=True)
        self.conn = self.db.conn
        # No journal while building (nothing else has the file open yet); WAL comes back
        # in close(), so the file is the same as a gateway's.
        self.conn.execute("PRAGMA journal_mode = OFF").fetchall()
        self.conn.execute("PRAGMA synchronous = OFF")
        self.conn.execute(f"PRAGMA cache_size = -{cache_mib * 1024}")
        cur = self.conn.execute(
            "INSERT INTO writers (pid, host, service, started_at_ms) VALUES (?, ?, ?, ?)",
            (os.getpid(), socket.gethostname(), service, time.time_ns() // 1_000_000),
        )
        self.writer_id = cur.lastrowid
        self.conn.commit()
        self.counts = dict.fromkeys(TABLE_COLUMNS, 0)

    def write(self, source: Iterable[Message]) -> dict[str, int]:
        batch: dict[str, list[tuple[Any, ...]]] = {t: [] for t in TABLE_COLUMNS}
        for n, m in enumerate(source, start=1):
            for table, rows in rows_of(m, service=self.service, writer_id=self.writer_id).items():
                cols = TABLE_COLUMNS[table]
                ids = ID_COLUMNS[table]
                batch[table].extend(
                    tuple(pack(row.get(c)) if c in ids else row.get(c) for c in cols)
                    for row in rows)
            if n % self.batch_messages == 0:
                self._flush(batch)
        self._flush(batch)
        return dict(self.counts)

    def _flush(self, batch: dict[str, list[tuple[Any, ...]]]) -> None:
        with self.conn:
            for table, rows in batch.items():
                if rows:
                    self.conn.executemany(_INSERT[table], rows)
                    self.counts[table] += len(rows)
                    rows.clear()
            # What a gateway's background writer does after its batches.
            refresh_verdicts(self.db)

    def close(self) -> None:
        # As a gateway leaves it: writer closed, WAL folded back into the file.
        self.conn.execute(
            "UPDATE writers SET ended_at_ms = ? WHERE id = ?",
            (time.time_ns() // 1_000_000, self.writer_id),
        )
        self.conn.commit()
        self.conn.execute("PRAGMA journal_mode = WAL").fetchall()
        self.conn.close()

    def __enter__(self) -> BulkWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the real write path --------------------------------------------------------------------


class FakeClock:
    """Stands in for the SDK's ``time_ns`` so spans get the model's times."""

    def __init__(self) -> None:
        self.ns = 0

    def set_ms(self, ms: int) -> None:
        self.ns = ms * 1_000_000

    def __call__(self) -> int:
        return self.ns


class ScriptedIds(IdGenerator):
    """Hands out the ids a message model holds, in the order the SDK asks for them."""

    def __init__(self) -> None:
        self.traces: deque[int] = deque()
        self.spans: deque[int] = deque()

    def load(self, m: Message) -> None:
        self.traces.append(m.trace_id)
        self.spans.extend(m.span_ids())

    def generate_trace_id(self) -> int:
        return self.traces.popleft()

    def generate_span_id(self) -> int:
        return self.spans.popleft()


class Gateway:
    """A gateway's four decorated steps, driven by :class:`Message` models.

    Each step continues the trace from the message's metadata dict (``carrier=``), the
    way docs/instrumenting.md's carrier example does. Failures are raised by the step
    and handled as a gateway would (a swallowed enqueue failure, a retried send).
    """

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.clock = clock

        @otel_delivery.inbound(
            channel=arg("m.channel"), inbound_id=arg("m.inbound_id"), sender=arg("m.sender"),
            conversation=arg("m.conversation"), carrier=arg("meta"),
        )
        def receive(m: Message, meta: dict[str, str]) -> None:
            self._at(m.received_ms + m.inbound_ms)

        @otel_delivery.ai_run(agent=AGENT, model=MODEL, carrier=arg("meta"))
        def run_agent(m: Message, meta: dict[str, str]) -> str | None:
            self._at(m.run_started_ms + m.run_ms)
            if m.run_outcome == "failed":
                raise RUN_FAILURE.exc_type(RUN_FAILURE.text)
            return "the reply" if m.run_outcome == "reply" else None

        @otel_delivery.enqueue(
            delivery_id=arg("m.delivery_id"), recipient=arg("m.sender"), carrier=arg("meta")
        )
        def enqueue(m: Message, meta: dict[str, str]) -> None:
            self._at(m.enqueue_started_ms + ENQUEUE_MS)
            if m.enqueue_failed:
                raise ENQUEUE_FAILURE.exc_type(ENQUEUE_FAILURE.text)

        @otel_delivery.deliver(
            delivery_id=arg("m.delivery_id"), recipient=arg("m.sender"),
            max_attempts=MAX_ATTEMPTS, carrier=arg("meta"),
        )
        def send(m: Message, a: Attempt, number: int, meta: dict[str, str]) -> dict[str, str]:
            self._at(a.started_ms + a.duration_ms)
            if a.error is not None:
                raise a.error.exc_type(a.error.text)
            return {"message_id": provider_message_id(m, number)}

        self.receive = receive
        self.run_agent = run_agent
        self.enqueue = enqueue
        self.send = send

    def _at(self, ms: int) -> None:
        if self.clock is not None:
            self.clock.set_ms(ms)

    def handle(self, m: Message) -> int:
        """One message through every step; returns the number of spans it made."""
        meta: dict[str, str] = {}
        self._at(m.received_ms)
        self.receive(m, meta)
        self._at(m.run_started_ms)
        try:
            self.run_agent(m, meta)
        except ModelOverloaded:
            return 2
        if m.enqueue_span is None:
            return 2
        self._at(m.enqueue_started_ms)
        try:
            self.enqueue(m, meta)
        except QueueFull:
            pass  # the seed gateway's .catch(() => null)
        for number, a in enumerate(m.attempts, start=1):
            self._at(a.started_ms)
            try:
                self.send(m, a, number, meta)
            except (ChannelError, asyncio.CancelledError):
                pass  # the queue retries later
        return 3 + len(m.attempts)
