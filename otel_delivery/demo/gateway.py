"""A small chat gateway, built the way real ones are, with one decorator line per step.

* one **receiver** task per channel parses the platform's updates (``@inbound``);
* one **agent loop** task runs the AI agent on each message (``@ai_run``) and puts the
  reply on the delivery queue (``@enqueue``, on ``DeliveryQueue.enqueue``), swallowing
  an enqueue failure the way the seed gateway's ``.catch(() => null)`` does;
* one **sender** task per channel makes one delivery attempt at a time
  (``@deliver``) and tells the queue whether to retry.

The tasks are joined by ``asyncio.Queue`` and by the persisted delivery queue, so the
current context never flows from one stage to the next. The trace context rides in
the message's ``metadata`` dict and in the queued entry's ``trace`` dict instead,
and each decorator is pointed at it with ``carrier=arg(...)``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import otel_delivery
from otel_delivery import arg

from ._scenario import IMAGE_TEXT, LONG_REPLY_TEXT, NO_REPLY_TEXT, delivery_id_for
from .channels import CHANNELS, ChannelAPIError, SentMessage
from .delivery_queue import DeliveryQueue, Entry, SimClock
from .messages import InboundMessage, Reply

__all__ = [
    "AGENT",
    "MODEL",
    "SERVICE_NAME",
    "Agent",
    "ChannelAPI",
    "ChannelSender",
    "FakeModel",
    "Gateway",
    "GatewayStats",
    "Receiver",
    "parse_update",
    "retry_at",
]

SERVICE_NAME = "demo-gateway"
AGENT = "assistant"
MODEL = "demo-model"  # FakeModel below; no real LLM is called
MAX_ATTEMPTS = 3
# Backoff after a failure that came without a retry-after hint: 30 s, then 60 s.
BACKOFF_SECONDS = 30.0


class ChannelAPI(Protocol):
    """The one call a sender needs from a platform's SDK."""

    async def send_message(
        self, recipient: str, text: str, *, client_ref: str
    ) -> SentMessage: ...


@dataclass
class GatewayStats:
    """What the gateway itself saw, counted as it happened (not read from the store)."""

    inbound: int = 0
    ai_runs: int = 0
    replies: int = 0
    enqueued: int = 0
    enqueue_failed: int = 0
    #: (channel, status) -> attempts, status being delivered, failed or interrupted
    attempts: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: delivered | failed -> deliveries that ended that way
    outcomes: Counter[str] = field(default_factory=Counter)
    reloaded_after_restart: int = 0
    #: status -> receipts the platform's webhooks reported (sent, delivered, read, failed)
    receipts: Counter[str] = field(default_factory=Counter)


def whatsapp_statuses(payload: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Every status in a WhatsApp Cloud API webhook payload."""
    return [
        status for entry in payload.get("entry", ())
        for change in entry.get("changes", ())
        for status in change.get("value", {}).get("statuses", ())
    ]


class StatusWebhook:
    """The endpoint WhatsApp posts message statuses to (``@receipt``)."""

    def __init__(self, stats: GatewayStats) -> None:
        self.stats = stats

    @otel_delivery.receipt(
        channel="whatsapp", receipts=lambda self, payload: whatsapp_statuses(payload)
    )
    def post(self, payload: Mapping[str, Any]) -> None:
        for status in whatsapp_statuses(payload):
            self.stats.receipts[str(status.get("status"))] += 1


def parse_update(channel: str, update: Mapping[str, Any]) -> InboundMessage:
    """Turn one platform's raw update into the gateway's message type."""
    if channel == "telegram":
        m = update["message"]
        return InboundMessage(str(m["message_id"]), channel, str(m["from"]["id"]),
                              str(m["chat"]["id"]), m["text"])
    if channel == "slack":
        return InboundMessage(update["client_msg_id"], channel, update["user"],
                              update["channel"], update["text"])
    if channel == "whatsapp":
        m = update["messages"][0]
        return InboundMessage(m["id"], channel, m["from"], m["from"], m["text"]["body"])
    if channel == "discord":
        return InboundMessage(update["id"], channel, update["author"]["id"],
                              update["channel_id"], update["content"])
    raise ValueError(f"unknown channel {channel!r}; expected one of {', '.join(CHANNELS)}")


class Receiver:
    """One channel's webhook or long-poll loop."""

    def __init__(
        self,
        channel: str,
        updates: asyncio.Queue[dict[str, Any]],
        agent_inbox: asyncio.Queue[InboundMessage],
        stats: GatewayStats,
    ) -> None:
        self.channel = channel
        self.updates = updates
        self.agent_inbox = agent_inbox
        self.stats = stats

    async def run(self) -> None:
        while True:
            update = await self.updates.get()
            try:
                await self.handle(parse_update(self.channel, update))
            finally:
                self.updates.task_done()

    @otel_delivery.inbound(
        channel=arg("msg.channel"),
        inbound_id=arg("msg.id"),
        sender=arg("msg.sender"),
        conversation=arg("msg.conversation"),
        carrier=arg("msg.metadata"),
    )
    async def handle(self, msg: InboundMessage) -> None:
        self.stats.inbound += 1
        await self.agent_inbox.put(msg)


class FakeModel:
    """Stands in for the LLM call; answers by what the message asks for."""

    async def complete(self, text: str) -> tuple[str, bytes | None] | None:
        await asyncio.sleep(0)
        if text == NO_REPLY_TEXT:
            return None
        if text == LONG_REPLY_TEXT:
            return "\n".join(f"[build] step {i}: ok" for i in range(3000)), None
        if text == IMAGE_TEXT:
            return "Here is your lighthouse.", b"\x89PNG\r\n\x1a\n..."
        return f"Sure: {text.rstrip('?')}. Done.", None


class Agent:
    """The agent loop's one step: run the model on a message, produce a reply or none."""

    def __init__(self, model: FakeModel, stats: GatewayStats) -> None:
        self.model = model
        self.stats = stats

    @otel_delivery.ai_run(agent=AGENT, model=MODEL, carrier=arg("msg.metadata"))
    async def run(self, msg: InboundMessage) -> Reply | None:
        self.stats.ai_runs += 1
        answer = await self.model.complete(msg.text)
        if answer is None:
            return None
        text, attachment = answer
        self.stats.replies += 1
        # metadata now holds this run's context (@ai_run wrote it), so the enqueue
        # and every delivery attempt land in the same trace.
        return Reply(
            delivery_id=delivery_id_for(msg.id), inbound_id=msg.id, channel=msg.channel,
            recipient=msg.conversation, text=text, metadata=msg.metadata, attachment=attachment,
        )


def retry_at(entry: Entry, error: BaseException, now: float) -> float | None:
    """When to try ``entry`` again after ``error``, or None to give up.

    Client errors (blocked, too long, not found) never get better, so they are not
    retried; everything else is, until ``max_attempts``, honouring the platform's
    retry-after hint when it gives one.
    """
    api_error = error if isinstance(error, ChannelAPIError) else None
    client_error = api_error is not None and 400 <= api_error.status_code < 500
    if client_error and api_error is not None and api_error.status_code != 429:
        return None
    attempts_made = int(entry["attempts"]) + 1
    if attempts_made >= int(entry["max_attempts"]):
        return None
    if api_error is not None and api_error.retry_after is not None:
        return now + api_error.retry_after
    return now + BACKOFF_SECONDS * 2.0 ** (attempts_made - 1)


class ChannelSender:
    """One channel's sender: takes due entries from the queue, one attempt each."""

    def __init__(
        self,
        channel: str,
        api: ChannelAPI,
        queue: DeliveryQueue | None = None,
        stats: GatewayStats | None = None,
    ) -> None:
        self.channel = channel
        self.api = api
        self.queue = queue
        self.stats = stats or GatewayStats()

    async def run(self) -> None:
        queue = self.queue
        if queue is None:
            raise RuntimeError("this sender has no queue to take entries from")
        while (entry := await queue.next_due(self.channel)) is not None:
            try:
                await self.send_once(entry)
            except Exception as exc:  # every failure, of any kind, is the retry policy's to judge
                self.stats.attempts[(self.channel, "failed")] += 1
                when = retry_at(entry, exc, queue.clock.now())
                if when is None:
                    self.stats.outcomes["failed"] += 1
                queue.failed(entry, exc, retry_at=when)
            else:
                self.stats.attempts[(self.channel, "delivered")] += 1
                self.stats.outcomes["delivered"] += 1
                queue.delivered(entry)

    # No attempt= here: the count kept in the queue file is rewritten in place and
    # loses an attempt cut short by a crash; the store numbers attempts from its
    # appended rows instead.
    @otel_delivery.deliver(
        channel=arg("entry.channel"),
        recipient=arg("entry.recipient"),
        delivery_id=arg("entry.id"),
        max_attempts=arg("entry.max_attempts"),
        carrier=arg("entry.trace"),
    )
    async def send_once(self, entry: Entry) -> SentMessage:
        """One attempt, no retry inside: a wrapper must see every failure."""
        return await self.api.send_message(
            entry["recipient"], entry["text"], client_ref=entry["id"]
        )


class Gateway:
    """Receivers, the agent loop and the senders, wired together and supervised."""

    def __init__(
        self,
        apis: Mapping[str, ChannelAPI],
        queue_path: Path,
        clock: SimClock,
        model: FakeModel | None = None,
    ) -> None:
        self.apis = dict(apis)
        self.queue_path = queue_path
        self.clock = clock
        self.stats = GatewayStats()
        self.queue = DeliveryQueue(queue_path, clock, max_attempts=MAX_ATTEMPTS)
        self.updates: dict[str, asyncio.Queue[dict[str, Any]]] = {c: asyncio.Queue() for c in apis}
        self.agent_inbox: asyncio.Queue[InboundMessage] = asyncio.Queue()
        self.agent = Agent(model or FakeModel(), self.stats)
        self.status_webhook = StatusWebhook(self.stats)
        self._workers: list[asyncio.Task[None]] = []
        self._senders: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for channel, updates in self.updates.items():
            receiver = Receiver(channel, updates, self.agent_inbox, self.stats)
            self._workers.append(asyncio.create_task(receiver.run(), name=f"receive {channel}"))
        self._workers.append(asyncio.create_task(self._agent_loop(), name="agent loop"))
        self._start_senders()

    def _start_senders(self) -> None:
        for channel, api in self.apis.items():
            sender = ChannelSender(channel, api, self.queue, self.stats)
            self._senders.append(asyncio.create_task(sender.run(), name=f"send {channel}"))

    async def _agent_loop(self) -> None:
        while True:
            msg = await self.agent_inbox.get()
            try:
                reply = await self.agent.run(msg)
                if reply is not None:
                    try:
                        self.queue.enqueue(reply)
                        self.stats.enqueued += 1
                    except Exception:  # the seed gateway's .catch(() => null): the reply is gone
                        self.stats.enqueue_failed += 1
            finally:
                self.agent_inbox.task_done()

    def receive(self, channel: str, update: dict[str, Any]) -> None:
        """A platform pushes one update to the gateway."""
        self.updates[channel].put_nowait(update)

    async def settle(self, *, until: float) -> None:
        """Run until every task is idle and no retry is due before ``until`` (clock time).

        While all is idle, the clock jumps to the next due retry instead of sleeping.
        """
        while True:
            await self._watching(self._idle())
            due = self.queue.next_due_at()
            if due is None or due > until:
                return
            self.clock.advance_to(due)
            self.queue.wake()

    async def handle_inbound_only(self) -> None:
        """Wait until every received update has been through the agent loop."""
        await self._watching(self._inbound_done())

    async def _inbound_done(self) -> None:
        for updates in self.updates.values():
            await updates.join()
        await self.agent_inbox.join()

    async def _idle(self) -> None:
        await self._inbound_done()
        await self.queue.wait_idle()

    async def _watching(self, waiting: Coroutine[Any, Any, None]) -> None:
        """Await ``waiting``, but raise at once if a gateway task dies meanwhile.

        A dead task never marks its work done, so waiting for it would hang forever.
        """
        waiter = asyncio.ensure_future(waiting)
        done, _ = await asyncio.wait(
            [waiter, *self._workers, *self._senders], return_when=asyncio.FIRST_COMPLETED
        )
        if waiter in done:
            waiter.result()
            return
        waiter.cancel()
        for task in done:
            task.result()  # raises what killed it
        stopped = ", ".join(sorted(t.get_name() for t in done))
        raise RuntimeError(f"gateway task stopped while work was pending: {stopped}")

    async def stop_senders(self) -> None:
        self.queue.close()
        await asyncio.gather(*self._senders)
        self._senders.clear()

    async def restart_queue(self) -> int:
        """Drop the queue's in-memory state and load a new instance from its file.

        Returns how many pending entries the new instance found.
        """
        await self.stop_senders()
        self.queue = DeliveryQueue(self.queue_path, self.clock, max_attempts=MAX_ATTEMPTS)
        found = len(self.queue.pending())
        self.stats.reloaded_after_restart += found
        self._start_senders()
        return found

    async def stop(self) -> None:
        await self.stop_senders()
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()
