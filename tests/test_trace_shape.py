"""inbound → AI run → deliver share one trace, across tasks, queues and restarts."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry import trace

import otel_delivery
from otel_delivery import arg

from .conftest import Traced, make_traced, span_dict


@dataclass
class Message:
    id: str
    chat_id: int
    text: str
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class Reply:
    chat_id: int
    text: str
    metadata: dict[str, str]


def test_nested_calls_share_a_trace(traced: Traced) -> None:
    @otel_delivery.deliver(channel="telegram")
    def send(text: str) -> None: ...

    @otel_delivery.ai_run(agent="helper")
    def run(text: str) -> str:
        send(text.upper())
        return text.upper()

    @otel_delivery.inbound(channel="telegram", inbound_id=arg("msg_id"))
    def handle(msg_id: str, text: str) -> None:
        run(text)

    handle("m-1", "hello")
    spans = {s["attributes"]["otel_delivery.kind"]: s for s in map(span_dict, traced.spans())}
    assert {s["trace_id"] for s in spans.values()} == {spans["inbound"]["trace_id"]}
    assert spans["inbound"]["parent_id"] is None
    assert spans["ai_run"]["parent_id"] == spans["inbound"]["span_id"]
    assert spans["deliver"]["parent_id"] == spans["ai_run"]["span_id"]
    # The inbound message id and channel flow down to the later stages.
    assert spans["deliver"]["attributes"]["otel_delivery.inbound_id"] == "m-1"
    assert spans["ai_run"]["attributes"]["otel_delivery.channel"] == "telegram"
    assert spans["ai_run"]["name"] == "invoke_agent helper"
    assert spans["ai_run"]["attributes"]["gen_ai.operation.name"] == "invoke_agent"
    assert spans["inbound"]["kind"] == "CONSUMER"


def test_inbound_continues_a_traceparent_carried_by_the_message(traced: Traced) -> None:
    upstream = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

    @otel_delivery.inbound(channel="slack", carrier=arg("msg.metadata"))
    def handle(msg: Message) -> None: ...

    handle(Message("m", 1, "hi", {"traceparent": upstream}))
    (span,) = traced.spans("inbound")
    d = span_dict(span)
    assert d["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert d["parent_id"] == "b7ad6b7169203331"


def test_three_stages_in_separate_tasks_linked_by_queues(traced: Traced) -> None:
    leaked: list[bool] = []

    @otel_delivery.inbound(
        channel="telegram", inbound_id=arg("msg.id"), carrier=arg("msg.metadata")
    )
    async def receive(msg: Message, inbox: asyncio.Queue[Message]) -> None:
        await inbox.put(msg)

    @otel_delivery.ai_run(agent="bot", carrier=arg("msg.metadata"))
    async def run_agent(msg: Message) -> Reply:
        return Reply(msg.chat_id, msg.text[::-1], dict(msg.metadata))

    @otel_delivery.deliver(recipient=arg("reply.chat_id"), carrier=arg("reply.metadata"))
    async def send(reply: Reply) -> dict[str, int]:
        return {"message_id": reply.chat_id * 10}

    async def agent_loop(inbox: asyncio.Queue[Message], outbox: asyncio.Queue[Reply]) -> None:
        while True:
            msg = await inbox.get()
            await outbox.put(await run_agent(msg))
            # Nothing the decorator attached may stay behind in this long-lived task.
            leaked.append(trace.get_current_span().get_span_context().is_valid)
            inbox.task_done()

    async def sender_loop(outbox: asyncio.Queue[Reply]) -> None:
        while True:
            reply = await outbox.get()
            await send(reply)
            leaked.append(trace.get_current_span().get_span_context().is_valid)
            outbox.task_done()

    async def main() -> None:
        inbox: asyncio.Queue[Message] = asyncio.Queue()
        outbox: asyncio.Queue[Reply] = asyncio.Queue()
        workers = [
            asyncio.create_task(agent_loop(inbox, outbox)),
            asyncio.create_task(sender_loop(outbox)),
        ]
        for i in range(3):
            await receive(Message(f"in-{i}", 100 + i, f"text {i}"), inbox)
        await inbox.join()
        await outbox.join()
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)

    asyncio.run(main())
    assert leaked == [False] * 6
    spans = [span_dict(s) for s in traced.spans()]
    by_trace: dict[str, dict[str, dict[str, Any]]] = {}
    for s in spans:
        by_trace.setdefault(s["trace_id"], {})[s["attributes"]["otel_delivery.kind"]] = s
    assert len(by_trace) == 3
    for stages in by_trace.values():
        assert set(stages) == {"inbound", "ai_run", "deliver"}
        assert stages["ai_run"]["parent_id"] == stages["inbound"]["span_id"]
        assert stages["deliver"]["parent_id"] == stages["ai_run"]["span_id"]
        inbound_id = stages["inbound"]["attributes"]["otel_delivery.inbound_id"]
        assert stages["deliver"]["attributes"]["otel_delivery.inbound_id"] == inbound_id
        assert stages["deliver"]["attributes"]["otel_delivery.channel"] == "telegram"
    # And the store correlates them by inbound id without any span data.
    rows = traced.rows(
        "SELECT i.inbound_id, a.status FROM inbound_messages i "
        "JOIN attempts a ON a.trace_id = i.trace_id ORDER BY i.inbound_id"
    )
    assert rows == [{"inbound_id": f"in-{i}", "status": "delivered"} for i in range(3)]


def test_retry_after_restart_joins_the_trace_and_links_earlier_attempts(tmp_path: Path) -> None:
    store = tmp_path / "deliveries.db"
    queue_file = tmp_path / "queue.json"

    # -- process 1: the reply is queued with its trace context, the first attempt fails.
    first = make_traced(store)

    @otel_delivery.deliver(
        channel="whatsapp", delivery_id=arg("entry.id"), max_attempts=3,
        carrier=arg("entry.trace"),
    )
    def attempt(entry: dict[str, Any], fail: bool) -> str:
        if fail:
            raise TimeoutError("gateway timed out")
        return "sent"

    @otel_delivery.ai_run(agent="bot")
    def run() -> None:
        entry = {"id": "dlv-1", "trace": otel_delivery.carry()}
        try:
            attempt(entry, True)
        except TimeoutError:
            queue_file.write_text(json.dumps(entry))

    run()
    (run_span,) = first.spans("ai_run")
    (first_attempt,) = first.spans("deliver")
    first.handle.shutdown()

    # -- process 2 (a fresh provider and store writer): the retry.
    second = make_traced(store)
    try:
        entry = json.loads(queue_file.read_text())
        assert attempt(entry, False) == "sent"
        (retry,) = second.spans("deliver")
        r = span_dict(retry)
        assert r["trace_id"] == format(run_span.context.trace_id, "032x")
        assert r["parent_id"] == format(run_span.context.span_id, "016x")
        assert r["links"] == [format(first_attempt.context.span_id, "016x")]
        assert r["attributes"]["otel_delivery.attempt"] == 2
        rows = second.rows(
            "SELECT attempt, status, failure_class, final, trace_id FROM attempts "
            "WHERE delivery_id = 'dlv-1' ORDER BY attempt"
        )
        assert [(x["attempt"], x["status"], x["failure_class"], x["final"]) for x in rows] == [
            (1, "failed", "transient", 0),
            (2, "delivered", None, 1),
        ]
        assert len({x["trace_id"] for x in rows}) == 1
    finally:
        second.handle.shutdown()


def test_swallowed_enqueue_failure_is_recorded(traced: Traced) -> None:
    @otel_delivery.enqueue(channel="discord", delivery_id=arg("reply_id"))
    def enqueue_reply(reply_id: str) -> None:
        raise OSError("queue directory is read-only")

    @otel_delivery.ai_run(agent="bot")
    def run() -> str:
        try:
            enqueue_reply("r-1")
        except OSError:
            pass  # the gateway's .catch(() => null)
        return "the reply text"

    assert run() == "the reply text"
    (row,) = traced.rows("SELECT delivery_id, status, error_type, error_text FROM enqueues")
    assert row == {
        "delivery_id": "r-1", "status": "failed", "error_type": "OSError",
        "error_text": "queue directory is read-only",
    }
    (run_row,) = traced.rows("SELECT reply_produced FROM ai_runs")
    assert run_row["reply_produced"] == 1
