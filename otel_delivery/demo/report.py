"""The operator's report after a demo run, read back from the store.

Everything under "From the store" comes from the ``local_store`` query functions the
CLI uses, not from the demo's own counters, so the report shows what an operator
would find after a real incident. It covers this run's window only.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Sequence
from typing import TextIO

import local_store
from local_store import open_store

from ._result import DemoResult
from ._scenario import STORIES

__all__ = ["write_report"]

_ERROR_TEXT_WIDTH = 48
# The stories worth a `trace` command, in the order a reader meets them.
_TRACE_STORIES = (
    "rate_limited", "blocked", "enqueue_failed", "interrupted", "retried_after_restart",
    "timed_out", "too_long", "failed_after_accept",
)


def _cell(value: object, width: int = _ERROR_TEXT_WIDTH) -> str:
    if value is None:
        return "-"
    text = " ".join(str(value).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]], indent: str = "  ") -> str:
    """Aligned columns, numbers to the right."""
    numeric = [
        bool(rows) and all(isinstance(r[i], int) for r in rows) for i in range(len(headers))
    ]
    cells = [list(headers)] + [[_cell(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        aligned = (
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(row, widths, numeric, strict=True)
        )
        lines.append((indent + "  ".join(aligned)).rstrip())
    return "\n".join(lines)


def _short_type(error_type: str | None) -> str | None:
    """``otel_delivery.demo.channels.TelegramError`` reads as ``TelegramError`` here."""
    return error_type.rsplit(".", 1)[-1] if error_type else error_type


def write_report(result: DemoResult, out: TextIO, *, store_option: bool) -> None:
    """Print what happened, what the store says about it, and the commands to dig further.

    ``store_option``: the run was given a store path, so the printed commands need
    ``--store PATH`` to find it.
    """
    c = result.counts
    by_status = c.attempts_by_status()
    lines: list[str] = []
    p = lines.append
    p(f"otel-delivery demo: seed {result.seed}, {result.messages} messages on "
      f"{', '.join(result.channels)} ({result.elapsed_seconds:.1f} s)")
    p(f"store: {result.store}")
    p("")
    p("What the gateway did")
    p(f"  {c.inbound} messages received, {c.ai_runs} AI runs, {c.replies} replies; "
      f"{c.enqueued} enqueued, {c.enqueue_failed} lost at enqueue (error swallowed)")
    p(f"  {sum(by_status.values())} delivery attempts: "
      f"{by_status.get('delivered', 0)} delivered, {by_status.get('failed', 0)} failed, "
      f"{by_status.get('interrupted', 0)} interrupted")
    p(f"  a sender was killed (SIGKILL) mid-send; the queue restarted from its file "
      f"with {c.reloaded_after_restart} pending entries, whose retries joined their traces")
    if c.receipts:
        p("  WhatsApp then reported statuses for the messages its API accepted: "
          + ", ".join(f"{n} {status}" for status, n in c.receipts.items()))
    p("  (backoffs are simulated: the gateway's clock jumps ahead instead of sleeping)")

    # This run only, with a second of margin so its first rows are inside the window.
    since_seconds = max(1.0, time.time() - result.started_at_ms / 1000 + 1)
    db = open_store(result.store, readonly=True)
    try:
        by_channel = local_store.summary(db, since_seconds=since_seconds, by="channel")
        by_error = local_store.summary(db, since_seconds=since_seconds, by="error")
        failed = local_store.failures(db, since_seconds=since_seconds, limit=1000)
        lost = local_store.undelivered(db, since_seconds=since_seconds, grace_seconds=0)
        cut_short = local_store.interrupted(db, since_seconds=since_seconds)
    finally:
        db.close()

    p("")
    p("From the store: attempts, and the deliveries they add up to, by channel")
    p(_table(
        ["channel", "attempts", "delivered", "failed", "interrupted",
         "deliveries", "-> delivered", "-> failed", "-> pending"],
        [
            [g.key["channel"] if g is not by_channel.total else "total", g.attempts,
             g.statuses.get("delivered", 0), g.statuses.get("failed", 0),
             g.statuses.get("interrupted", 0), sum(g.deliveries.values()),
             g.deliveries.get("delivered", 0), g.deliveries.get("failed", 0),
             g.deliveries.get("pending_retry", 0) + g.deliveries.get("in_flight", 0)]
            for g in [*by_channel.groups, by_channel.total]
        ],
    ))

    example: dict[tuple[str | None, str | None], str | None] = {}
    for row in failed:
        example.setdefault((row["error_type"], row["failure_class"]), row["error_text"])
    p("")
    p("Top errors")
    p(_table(
        ["attempts", "error", "class", "example"],
        [
            [g.attempts, _short_type(g.key["error_type"]), g.key["failure_class"],
             example.get((g.key["error_type"], g.key["failure_class"]))]
            for g in by_error.groups if g.statuses.get("failed")
        ],
    ))

    p("")
    p(f"Undelivered replies ({lost.replies}) and failed enqueues")
    p(_table(
        ["inbound", "channel", "reason", "attempts", "error"],
        [
            [i.inbound_id, i.channel, i.reason, i.attempts,
             f"{_short_type(i.error_type)}: {i.error_text}" if i.error_type else None]
            for i in lost.items
        ],
    ))

    if by_channel.receipts:
        p("")
        p("What the platforms reported after accepting (receipts)")
        p(_table(
            ["channel", "messages", "delivered", "read", "failed after accept"],
            [[r.channel, r.messages, r.delivered, r.read, r.failed]
             for r in by_channel.receipts],
        ))

    p("")
    p(f"Interrupted attempts ({len(cut_short)})")
    p(_table(
        ["delivery", "attempt", "channel", "why", "writer pid"],
        [[r["delivery_id"], r["attempt"], r["channel"], r["why"], r["writer_pid"]]
         for r in cut_short],
    ))

    store = f" --store {shlex.quote(str(result.store))}" if store_option else ""
    p("")
    p("Dig further")
    for name in _TRACE_STORIES:
        p(f"  # {STORIES[name]}")
        p(f"  otel-delivery trace --inbound {result.stories[name]}{store}")
    p("  # the same tables, and the checks cron would run")
    p(f"  otel-delivery summary --since 1h --by error{store}")
    p(f"  otel-delivery failures --since 1h --channel telegram{store}")
    p(f"  otel-delivery undelivered --since 1h --grace 0s{store}")
    p(f"  otel-delivery interrupted{store}")
    p(f"  otel-delivery health --since 1h{store}   # exits 1: this run has failures")
    p(f"  sqlite3 {shlex.quote(str(result.store))} "
      "'SELECT channel, error_type, error_text FROM v_failures LIMIT 5'")
    out.write("\n".join(lines) + "\n")
