"""``run_demo``: play the scenario through the gateway, then print the operator's report."""

from __future__ import annotations

import asyncio
import math
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from opentelemetry.sdk.trace import TracerProvider

import otel_delivery
from local_store import open_store

from ._crash import kill_mid_send
from ._result import DemoCounts, DemoResult
from ._scenario import STORIES, Scenario, plan
from .channels import CHANNELS, PLATFORMS, FakeChannelAPI, whatsapp_status_webhooks
from .delivery_queue import SimClock
from .exceptions import DemoError
from .gateway import SERVICE_NAME, Gateway, GatewayStats
from .report import write_report

__all__ = ["run_demo"]

# Clock time the first wave gets before the crash: long enough for every
# retry-after hint (at most 2 s), far shorter than the 30 s backoff after a
# timeout, so those retries are still waiting in the queue file at the restart.
RESTART_AFTER_SECONDS = 10.0
_FLUSH_TIMEOUT_SECONDS = 5.0


def run_demo(
    *,
    store: str | Path | None = None,
    seed: int = 7,
    messages: int = 40,
    out: TextIO | None = None,
    otlp_endpoint: str | None = None,
    tracer_provider: TracerProvider | None = None,
) -> DemoResult:
    """Run a simulated gateway into the store, then print the operator's report.

    Four channels, an agent loop and per-channel senders as asyncio tasks; rate limits,
    a blocked user, a too-long reply, timeouts, an enqueue failure the gateway swallows,
    and a sender killed mid-send, after which the delivery queue is restarted from its
    file. The same ``seed`` gives the same counts; ids differ per run so that runs
    into one store stay apart. ``tracer_provider`` is handed to ``configure()`` (tests
    pass one to see the spans). The report goes to ``out``, sys.stdout by default.

    >>> result = run_demo(store="/tmp/demo.db", seed=7)  # doctest: +SKIP
    >>> result.counts.deliveries  # doctest: +SKIP
    {'delivered': 31, 'failed': 4}
    """
    scenario = plan(seed, messages, run_tag=secrets.token_hex(2))
    started = time.monotonic()
    started_at_ms = time.time_ns() // 1_000_000
    handle = otel_delivery.configure(
        service_name=SERVICE_NAME,
        store=store,
        otlp_endpoint=otlp_endpoint,
        tracer_provider=tracer_provider,
    )
    try:
        store_path = handle.store_path
        if store_path is None:
            raise DemoError(
                "the local store is off (is OTEL_SDK_DISABLED=true set?); "
                "the demo writes to it and reports from it"
            )
        writer = handle.writer

        def store_quiet() -> None:
            # Only the store: an unreachable OTLP endpoint must not stall the demo here.
            if writer is not None:
                writer.flush(_FLUSH_TIMEOUT_SECONDS)

        with tempfile.TemporaryDirectory(prefix="otel-delivery-demo-") as tmp:
            stats = asyncio.run(_play(scenario, store_path, Path(tmp), store_quiet))
        # The report needs every row on disk. Exporters are flushed by shutdown(),
        # which is bounded; handle.force_flush() is not, with a dead collector.
        store_quiet()
    finally:
        handle.shutdown()
    result = DemoResult(
        store=store_path,
        seed=seed,
        messages=messages,
        channels=CHANNELS,
        counts=_counts(stats),
        stories={name: scenario.story(name).inbound_id for name in STORIES},
        started_at_ms=started_at_ms,
        elapsed_seconds=time.monotonic() - started,
    )
    write_report(result, sys.stdout if out is None else out, store_option=store is not None)
    return result


async def _play(
    scenario: Scenario, store: Path, workdir: Path, store_quiet: Callable[[], None]
) -> GatewayStats:
    clock = SimClock(time.time())
    apis = {
        channel: FakeChannelAPI(
            PLATFORMS[channel], blocked=scenario.blocked[channel], faults=scenario.faults[channel]
        )
        for channel in CHANNELS
    }
    queue_file = workdir / "delivery-queue.jsonl"
    gateway = Gateway(apis, queue_file, clock)
    gateway.start()
    try:
        for m in scenario.before_restart:
            gateway.receive(m.channel, m.update())
        await gateway.settle(until=clock.now() + RESTART_AFTER_SECONDS)

        # The crash. This process's senders stand down so that the child, playing
        # the process that dies, is the one that picks up the next reply.
        await gateway.stop_senders()
        crash = scenario.crash
        gateway.receive(crash.channel, crash.update())
        await gateway.handle_inbound_only()
        # Our own queued rows are written first, so nothing of ours holds the store's
        # write lock while the child records its attempt.
        store_quiet()
        committed = await asyncio.to_thread(
            kill_mid_send, store, queue_file, crash.delivery_id, workdir
        )
        if committed:
            gateway.stats.attempts[(crash.channel, "interrupted")] += 1
        # The restarted sender first commits what the dead one left in its journal, as
        # a restarted gateway does when it opens the store (any writable open does).
        open_store(store).conn.close()

        # The restart: a new queue instance reloads what the file still holds, and
        # the retries carry the trace context saved with each entry.
        await gateway.restart_queue()
        for m in scenario.after_restart:
            gateway.receive(m.channel, m.update())
        await gateway.settle(until=math.inf)
        # Later, WhatsApp reports what became of the messages its API accepted.
        for payload in whatsapp_status_webhooks(
            apis["whatsapp"].accepted, scenario.failing_after_accept, clock.now()
        ):
            gateway.status_webhook.post(payload)
    finally:
        await gateway.stop()
    return gateway.stats


def _counts(stats: GatewayStats) -> DemoCounts:
    attempts: dict[str, dict[str, int]] = {}
    for (channel, status), n in sorted(stats.attempts.items()):
        attempts.setdefault(channel, {})[status] = n
    return DemoCounts(
        inbound=stats.inbound,
        ai_runs=stats.ai_runs,
        replies=stats.replies,
        enqueued=stats.enqueued,
        enqueue_failed=stats.enqueue_failed,
        attempts=attempts,
        deliveries=dict(sorted(stats.outcomes.items())),
        reloaded_after_restart=stats.reloaded_after_restart,
        receipts=dict(sorted(stats.receipts.items())),
    )
