"""#9: recording a receipt costs no more than one inbound span, mirror on.

Side by side in one process and one store: a ``@receipt`` call recording one status
of a message sent earlier (its attempt found in the store, the path a webhook
handled by a fresh process takes; each message reports sent, delivered and read)
against an ``@inbound`` call, each followed by the flush of its rows, as #1 does.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import TracerProvider

import otel_delivery
from otel_delivery import arg

from .overhead import RESOURCE, DiscardExporter, _sync_sample
from .timing import Result, alternate, ratio_stats

__all__ = ["run_receipts"]

SENT = 5_000  # messages sent before the receipts arrive


def run_receipts(
    *, calls: int, rounds: int, warmup: int, workdir: Path
) -> tuple[list[Result], dict[str, Any]]:
    store = workdir / "receipts.db"
    sender = otel_delivery.configure(
        store=store, tracer_provider=TracerProvider(resource=RESOURCE),
        span_exporter=DiscardExporter(),
    )

    @otel_delivery.deliver(channel="whatsapp", recipient=arg("to"),
                           message_id=lambda r: r["messages"][0]["id"])
    def send(to: str, n: int) -> dict[str, Any]:
        return {"messages": [{"id": f"wamid.{n:08d}"}]}

    for n in range(SENT):
        send("16505551234", n)
    assert sender.force_flush()
    sender.shutdown()
    # A new configuration: no recent sends in memory, so receipts find attempts in the store.
    handle = otel_delivery.configure(
        store=store, tracer_provider=TracerProvider(resource=RESOURCE),
        span_exporter=DiscardExporter(),
    )
    now = int(time.time())

    @otel_delivery.receipt(channel="whatsapp", provider_message_id=arg("message_id"),
                           status=arg("status"), at=arg("at"), recipient=arg("to"))
    def on_status(message_id: str, status: str, at: int, to: str) -> None:
        return None

    @otel_delivery.inbound(channel="whatsapp", inbound_id=arg("message_id"), sender=arg("to"))
    def on_message(message_id: str, to: str) -> None:
        return None

    # Each message reports sent, delivered and read, one webhook each, as WhatsApp does.
    statuses = ("sent", "delivered", "read")
    variants_fn: dict[str, Callable[[int], Any]] = {
        "receipt": lambda i: on_status(f"wamid.{i // 3 % SENT:08d}", statuses[i % 3], now + i,
                                       "16505551234"),
        "inbound": lambda i: on_message(f"in-{i}", "16505551234"),
    }
    flushed: dict[str, list[float]] = {name: [] for name in variants_fn}
    counter = itertools.count()
    try:
        r = alternate(
            {name: _sync_sample(fn, lambda: next(counter), calls, handle.force_flush,
                                flushed[name])
             for name, fn in variants_fn.items()},
            rounds=rounds, warmup=warmup,
        )
        med, spread = ratio_stats(r.ratios("receipt", "inbound"))
        with_flush = {n: statistics.median(v[-rounds:]) * 1e6 for n, v in flushed.items()}
        assert handle.force_flush()
        stats = handle.stats()
    finally:
        handle.shutdown()
    result = Result(
        id="9-receipt", measure="#9 receipt per call vs inbound per call (mirror on)",
        a_label="ours: @receipt, one status, attempt found in the store",
        b_label="ours: @inbound", a=r.median("receipt") * 1e6, b=r.median("inbound") * 1e6,
        unit="µs/call", ratio=med, spread=spread, target="≤ 1.0×", met=med <= 1.0,
        note=(f"with the flush after the calls: receipt {with_flush['receipt']:.1f} µs vs "
              f"inbound {with_flush['inbound']:.1f} µs"),
    )
    return [result], {"stats": stats, "with_flush_us": with_flush}
