"""One process of a Slack gateway built on the durable-queue recipe.

Run by tests/test_recipe_restart.py, once per "life" of the gateway:

    python -m tests.recipe_gateway receive|work --store S --queue Q --slack-url URL

``receive`` handles one inbound message (inbound → AI run → enqueue) and then works
the queue once; ``work`` only works the queue, as a gateway does after a restart.
The last line printed is JSON: the queue's outcomes and this process's finished spans.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from slack_sdk import WebClient

import otel_delivery
from otel_delivery import arg
from otel_delivery.recipes import DurableQueue, QueuedDelivery

MESSAGE = {"ts": "1700000000.000001", "user": "U1", "channel": "C0RESTART", "text": "hello"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("phase", choices=["receive", "work"])
    parser.add_argument("--store", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--slack-url", required=True)
    parser.add_argument("--timeout-seconds", type=float, default=5.0)
    parser.add_argument("--clock-offset-seconds", type=float, default=0.0)
    args = parser.parse_args(argv)

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    otel = otel_delivery.configure(
        service_name="recipe-gateway", store=args.store, tracer_provider=provider
    )
    slack = WebClient(token="xoxb-test", base_url=args.slack_url,
                      timeout=args.timeout_seconds)  # type: ignore[arg-type]
    queue = DurableQueue(args.queue, max_attempts=4)

    # -- the gateway: four decorator lines ----------------------------------------------

    @otel_delivery.inbound(channel="slack", inbound_id=arg("event.ts"), sender=arg("event.user"))
    def on_message(event: dict[str, str]) -> None:
        reply = run_agent(event["text"])
        enqueue_reply(f"dlv-{event['ts']}", event["channel"], reply)

    @otel_delivery.ai_run(agent="echo")
    def run_agent(text: str) -> str:
        return f"echo: {text}"

    @otel_delivery.enqueue(channel="slack", delivery_id=arg("delivery_id"), recipient=arg("chat"))
    def enqueue_reply(delivery_id: str, chat: str, text: str) -> None:
        queue.put(delivery_id, channel="slack", recipient=chat, payload={"text": text})

    @otel_delivery.deliver(channel=arg("item.channel"), recipient=arg("item.recipient"),
                           delivery_id=arg("item.id"), max_attempts=arg("item.max_attempts"),
                           carrier=arg("item.trace"), message_id=lambda r: r["ts"])
    def attempt(item: QueuedDelivery) -> Any:
        queue.checkpoint(item)
        return slack.chat_postMessage(channel=item.recipient, text=item.payload["text"])

    # -- one life ----------------------------------------------------------------------

    if args.phase == "receive":
        on_message(MESSAGE)
    now_ms = time.time_ns() // 1_000_000 + int(args.clock_offset_seconds * 1000)
    outcomes = queue.run_due(attempt, now_ms=now_ms)
    queue.close()
    otel.force_flush()
    spans = [
        {
            "name": s.name,
            "span_id": format(s.context.span_id, "016x"),
            "trace_id": format(s.context.trace_id, "032x"),
            "parent_id": format(s.parent.span_id, "016x") if s.parent else None,
            "links": [format(link.context.span_id, "016x") for link in s.links],
            "attributes": dict(s.attributes or {}),
        }
        for s in exporter.get_finished_spans()
    ]
    otel.shutdown()
    print(json.dumps({"outcomes": outcomes, "spans": spans}))


if __name__ == "__main__":
    main()
