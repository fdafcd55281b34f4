"""``otel-delivery``: the operator's questions about the local store, one command each.

Every command is thin: resolve the store path, open it, call one ``local_store``
function, print. Library errors become one ``Error: ...`` line and a non-zero exit
(see :class:`~otel_delivery._cli_support.CliGroup`), so a command added later gets the
same treatment for free.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import click

import local_store
from local_store import (
    ATTEMPT_STATUSES,
    DELIVERY_OUTCOMES,
    InvalidArgumentError,
    format_duration,
)
from local_store._terminal import visible

from ._cli_support import (
    CliGroup,
    duration_option,
    in_window,
    opened,
    optional_seconds,
    plural,
    print_json,
    retry_window_option,
    seconds,
    store_and_json,
    table,
    when,
)
from ._paths import resolve_store_path

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])


@click.group(cls=CliGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Query the local delivery store that otel_delivery.configure() writes.

    The store is --store PATH, else $OTEL_DELIVERY_STORE, else
    $XDG_STATE_HOME/otel-delivery/deliveries.db (~/.local/state/... without
    XDG_STATE_HOME). Every query command takes --json; `demo` writes a store.

    \b
    Example:
      otel-delivery summary --since 7d --by channel
    """


# -- commands ------------------------------------------------------------------------


@main.command(short_help="Attempts and deliveries per channel, error or status.")
@duration_option("--since", default="7d", show_default=True, help="Window: 90s, 5m, 1h, 7d, 2w.")
@click.option(
    "--by", default="channel", show_default=True, metavar="channel|error|status",
    help="Group attempts by channel, by error type (attempts that did not fail in one "
    "group with no error) or by status.",
)
@retry_window_option
@store_and_json
def summary(store: str | None, as_json: bool, since: str, by: str, retry_window: str) -> None:
    """Count attempts by status and deliveries by final outcome, per group.

    The totals are the same whatever --by is, and the groups' attempts add up to
    them. A delivery's outcome is judged on all its attempts: delivered, failed (for
    good, or out of attempts), abandoned (failed transiently, no retry within
    --retry-window), pending_retry, interrupted (its process died mid-send) or
    in_flight. Deliveries are counted per channel with --by channel, else only in
    the total.

    \b
    Example:
      otel-delivery summary --since 7d --by error
    """
    with opened(store) as db:
        result = local_store.summary(
            db, since_seconds=seconds("--since", since), by=by,
            retry_window_seconds=seconds("--retry-window", retry_window, allow_zero=True),
        )
    if as_json:
        print_json(result.to_dict())
        return
    keys = list(result.total.key)
    statuses = _ordered(ATTEMPT_STATUSES, (g.statuses for g in result.groups))
    outcomes = _ordered(DELIVERY_OUTCOMES, [result.total.deliveries])
    groups = [*result.groups, result.total]

    def key_cells(g: local_store.SummaryGroup) -> list[object]:
        if g is result.total:
            return ["all", *[""] * (len(keys) - 1)]
        return list(g.key.values())

    click.echo(f"Attempts by {by} {in_window(result.since_seconds, result.window_start_ms)}:")
    click.echo(table(
        [*keys, "attempts", *statuses],
        [[*key_cells(g), g.attempts, *(g.statuses.get(s, 0) for s in statuses)] for g in groups],
    ))
    click.echo("\nDeliveries by final outcome:")
    counted = groups if by == "channel" else [result.total]
    click.echo(table(
        [*keys, "deliveries", *outcomes],
        [
            [*key_cells(g), sum(g.deliveries.values()), *(g.deliveries.get(o, 0) for o in outcomes)]
            for g in counted
        ],
    ))
    extra = sum(sum(g.deliveries.values()) for g in result.groups) - sum(
        result.total.deliveries.values()
    )
    if by == "channel" and extra > 0:
        click.echo(
            f"({plural(extra, 'delivery', 'deliveries')} more in the channel rows than in "
            "the total: they were tried on several channels and count in each)"
        )
    if result.receipts:
        click.echo("\nReceipts (what the platform reported after accepting a message):")
        click.echo(table(
            ["channel", "messages", "delivered", "read", "failed_after_accept",
             "delivered_rate", "read_rate"],
            [[r.channel, r.messages, r.delivered, r.read, r.failed,
              f"{r.delivered_rate:.1%}", f"{r.read_rate:.1%}"] for r in result.receipts],
        ))
    if result.unmatched_receipts:
        click.echo(
            f"({plural(result.unmatched_receipts, 'receipt')} for messages no attempt in "
            "the store sent: unmatched_receipt)"
        )


def _ordered(first: Sequence[str], dicts: Iterable[dict[str, int]]) -> list[str]:
    """``first``, then any other key that occurs (a status a gateway added)."""
    names = list(first)
    for d in dicts:
        names.extend(k for k in d if k not in names)
    return names


@main.command(short_help="Failed attempts, newest first, with their errors.")
@duration_option("--since", default=None, help="Window, e.g. 1d (default: all time).")
@click.option("--channel", default=None, help="Only this channel.")
@click.option("--limit", default=50, show_default=True, type=int, help="At most this many rows.")
@retry_window_option
@store_and_json
def failures(
    store: str | None, as_json: bool, since: str | None, channel: str | None, limit: int,
    retry_window: str,
) -> None:
    """List failed delivery attempts, newest first, with their errors and what became
    of their delivery since (delivered later, failed, abandoned, pending_retry, ...).

    \b
    Example:
      otel-delivery failures --since 1d --channel telegram --limit 20
    """
    since_seconds = optional_seconds("--since", since)
    with opened(store) as db:
        found = local_store.failures(
            db, since_seconds=since_seconds, channel=channel, limit=limit,
            retry_window_seconds=seconds("--retry-window", retry_window, allow_zero=True),
        )
    if as_json:
        print_json(found)
        return
    if not found:
        click.echo(f"no failed attempts {in_window(since_seconds)}")
        return
    click.echo(table(
        ["started", "channel", "delivery", "attempt", "final", "error_type", "class",
         "delivery_now", "error", "trace_id"],
        [
            [when(r["started_at_ms"]), r["channel"], r["delivery_id"], r["attempt"],
             {1: "yes", 0: "no"}.get(r["final"]), r["error_type"], r["failure_class"],
             r["delivery_outcome"], r["error_text"], r["trace_id"]]
            for r in found
        ],
    ))


@main.command(short_help="The whole story of one message, and its verdict.")
@click.option("--inbound", "inbound_id", default=None, help="The gateway's inbound message id.")
@click.option("--trace", "trace_id", default=None, help="A trace id (32 hex digits).")
@click.option("--delivery", "delivery_id", default=None, help="A delivery (queue entry) id.")
@retry_window_option
@store_and_json
def trace(
    store: str | None,
    as_json: bool,
    inbound_id: str | None,
    trace_id: str | None,
    delivery_id: str | None,
    retry_window: str,
) -> None:
    """Tell the whole story of one message: received, AI run, each attempt with its
    error, and the final outcome. Give exactly one of --inbound, --trace, --delivery.

    \b
    Example:
      otel-delivery trace --inbound tg-1001
    """
    given = [flag for flag, value in (
        ("--inbound", inbound_id), ("--trace", trace_id), ("--delivery", delivery_id),
    ) if value is not None]
    if len(given) != 1:
        raise InvalidArgumentError(
            "give exactly one of --inbound, --trace or --delivery"
            + (f" (got {' and '.join(given)})" if given else "")
        )
    window = seconds("--retry-window", retry_window, allow_zero=True)
    with opened(store) as db:
        story = local_store.trace_story(
            db, inbound_id=inbound_id, trace_id=trace_id, delivery_id=delivery_id,
            retry_window_seconds=window,
        )
    if as_json:
        print_json(story.to_dict())
        return
    click.echo(visible(f"trace {', '.join(story.trace_ids)}"))
    click.echo(table(
        ["at", "step", "status", "detail"],
        [[when(e["at_ms"]), e["kind"], e["status"], e["detail"]] for e in story.timeline],
        width=200,
    ))
    if story.deliveries:
        click.echo("")
        click.echo(table(
            ["delivery", "channel", "outcome", "attempts", "receipt", "last error"],
            [
                [d.delivery_id, d.channel, d.outcome, d.attempts,
                 story.receipt_status.get(d.delivery_id),
                 d.error_type if d.outcome != "delivered" else None]
                for d in story.deliveries
            ],
        ))
    click.echo(f"\nverdict: {visible(str(story.verdict))}")


@main.command(short_help="Replies produced but never delivered, and why.")
@duration_option("--since", default="1d", show_default=True, help="Window, e.g. 1d.")
@duration_option(
    "--grace", default="60s", show_default=True,
    help="Ignore replies younger than this (their delivery may still be under way).",
)
@retry_window_option
@store_and_json
def undelivered(
    store: str | None, as_json: bool, since: str, grace: str, retry_window: str
) -> None:
    """List replies that were produced but never delivered, with the reason, and
    every failed enqueue (the ones a gateway swallows).

    Reasons: no_attempt, enqueue_failed, failed, interrupted, abandoned (failed
    transiently, no retry within --retry-window), pending_retry, in_flight, and
    failed_after_accept (the API accepted it, the platform's receipt says failed).
    Replies younger than --grace are not judged yet; the last line says how many.

    \b
    Example:
      otel-delivery undelivered --since 1d --grace 2m
    """
    since_seconds = seconds("--since", since)
    grace_seconds = seconds("--grace", grace, allow_zero=True)
    with opened(store) as db:
        report = local_store.undelivered(
            db, since_seconds=since_seconds, grace_seconds=grace_seconds,
            retry_window_seconds=seconds("--retry-window", retry_window, allow_zero=True),
        )
    if as_json:
        print_json(report.to_dict())
        return
    window = in_window(report.since_seconds, report.window_start_ms)
    waiting = (
        f"; {plural(report.in_grace, 'reply', 'replies')} younger than the "
        f"{format_duration(report.grace_seconds)} grace not judged yet (--grace)"
        if report.in_grace else ""
    )
    if not report.items:
        click.echo(f"no undelivered replies or failed enqueues {window}{waiting}")
        return
    click.echo(table(
        ["at", "source", "reason", "channel", "inbound", "delivery", "attempts", "error",
         "trace_id"],
        [
            [when(i.at_ms), i.source, i.reason, i.channel, i.inbound_id, i.delivery_id,
             i.attempts, i.error_type, i.trace_id]
            for i in report.items
        ],
    ))
    after = (
        f", {plural(report.failed_after_accept, 'message')} failed after the API accepted"
        if report.failed_after_accept else ""
    )
    click.echo(
        f"\n{plural(report.replies, 'reply', 'replies')} not delivered, "
        f"{plural(report.enqueue_failures, 'other failed enqueue')}{after} {window}{waiting}"
    )


@main.command(short_help="Attempts cut short by a crash.")
@duration_option("--since", default=None, help="Window, e.g. 1d (default: all time).")
@click.option("--limit", default=100, show_default=True, type=int, help="At most this many rows.")
@store_and_json
def interrupted(store: str | None, as_json: bool, since: str | None, limit: int) -> None:
    """List attempts cut short by a crash: started, and their process is gone.

    Read-only: rows are reported, not rewritten (a restarting gateway does that).

    \b
    Example:
      otel-delivery interrupted --since 7d
    """
    since_seconds = optional_seconds("--since", since)
    with opened(store) as db:
        found = local_store.interrupted(db, since_seconds=since_seconds, limit=limit)
    if as_json:
        print_json(found)
        return
    if not found:
        click.echo(f"no interrupted attempts {in_window(since_seconds)}")
        return
    click.echo(table(
        ["started", "channel", "delivery", "attempt", "why", "writer", "trace_id"],
        [
            [when(r["started_at_ms"]), r["channel"], r["delivery_id"], r["attempt"], r["why"],
             f"pid {r['writer_pid']} on {r['writer_host']}" if r["writer_pid"] else None,
             r["trace_id"]]
            for r in found
        ],
    ))


@main.command(short_help="Exit 1, with reasons, when recent figures break limits.")
@duration_option("--since", default="1h", show_default=True, help="Window, e.g. 1h.")
@click.option("--max-failure-rate", type=float, default=0.05, show_default=True,
              help="Per channel, as a fraction of attempts.")
@click.option("--max-interrupted", type=int, default=0, show_default=True)
@click.option("--max-undelivered", type=int, default=0, show_default=True)
@click.option("--max-enqueue-failures", type=int, default=0, show_default=True)
@click.option("--max-drops", type=int, default=0, show_default=True)
@click.option("--max-misuse", type=int, default=0, show_default=True,
              help="Decorated calls that lost their trace link (orphan_send, carrier_missing).")
@click.option("--max-failed-after-accept", type=int, default=0, show_default=True,
              help="Messages the API accepted that the platform's receipts say failed.")
@click.option("--min-attempts-for-rate", type=int, default=1, show_default=True,
              help="Judge a channel's failure rate only from this many attempts.")
@duration_option(
    "--grace", default="60s", show_default=True,
    help="Replies younger than this are not counted as undelivered yet.",
)
@retry_window_option
@store_and_json
def health(
    store: str | None,
    as_json: bool,
    since: str,
    max_failure_rate: float,
    max_interrupted: int,
    max_undelivered: int,
    max_enqueue_failures: int,
    max_drops: int,
    max_misuse: int,
    max_failed_after_accept: int,
    min_attempts_for_rate: int,
    grace: str,
    retry_window: str,
) -> None:
    """Check the recent window against limits, for cron and monitoring: exit 0 and
    print "healthy: ..." when all are met, else exit 1 with one reason per line.

    \b
    Example:
      otel-delivery health --since 1h --max-failure-rate 0.05 || alert
    """
    with opened(store) as db:
        report = local_store.health(
            db,
            since_seconds=seconds("--since", since),
            max_failure_rate=max_failure_rate,
            max_interrupted=max_interrupted,
            max_undelivered=max_undelivered,
            max_enqueue_failures=max_enqueue_failures,
            max_drops=max_drops,
            max_misuse=max_misuse,
            max_failed_after_accept=max_failed_after_accept,
            min_attempts_for_rate=min_attempts_for_rate,
            grace_seconds=seconds("--grace", grace, allow_zero=True),
            retry_window_seconds=seconds("--retry-window", retry_window, allow_zero=True),
        )
    if as_json:
        print_json(report.to_dict())
    elif report.ok:
        click.echo(visible(f"healthy: {report.headline()}"))
    else:
        for reason in report.reasons:
            click.echo(visible(reason))
    if not as_json and report.undelivered_in_grace:
        click.echo(
            f"({plural(report.undelivered_in_grace, 'reply', 'replies')} younger than the "
            f"{format_duration(report.limits['grace_seconds'])} grace not judged yet: --grace)"
        )
    if not report.ok:
        raise SystemExit(1)


@main.command(short_help="Run one read-only SQL statement.")
@click.argument("sql")
@click.option("--param", "-p", "params", multiple=True, help="A value for each ? in SQL.")
@duration_option("--timeout", default="30s", show_default=True,
                  help="Stop the statement after this long.")
@store_and_json
def query(
    store: str | None, as_json: bool, sql: str, params: tuple[str, ...], timeout: str
) -> None:
    """Run one read-only SQL statement. Writes, ATTACH, PRAGMA and functions other
    than SQLite's core, date, JSON and math ones are refused; a statement is stopped
    at --timeout, or when its result passes 256 MB.

    Tables: attempts, inbound_messages, ai_runs, enqueues, writers, drops; views
    with readable times: v_attempts, v_failures, v_deliveries, v_undelivered,
    v_enqueue_failures, v_drops. Times in tables are Unix milliseconds. Long
    values are cut in the table; --json prints them whole.

    \b
    Example:
      otel-delivery query "SELECT channel, COUNT(*) FROM v_failures GROUP BY channel"
    """
    columns, found = local_store.readonly_query(
        resolve_store_path(store), sql, params, timeout_seconds=seconds("--timeout", timeout)
    )
    if as_json:
        print_json({"columns": columns, "rows": found})
        return
    if columns:
        click.echo(table(columns, found))
    click.echo(f"({len(found)} row{'' if len(found) == 1 else 's'})")


# -- the commands that write, and the demo --------------------------------------------
from ._cli_write import prune, upgrade  # noqa: E402 - registered after the questions

main.add_command(prune)
main.add_command(upgrade)

# -- demo ----------------------------------------------------------------------------
# `otel-delivery demo` lives with the demo gateway; it inherits _Group's one-line errors.
from .demo.command import demo  # noqa: E402 - registered after the store commands

main.add_command(demo)
