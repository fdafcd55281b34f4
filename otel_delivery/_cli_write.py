"""The ``otel-delivery`` commands that write to the store: ``prune`` and ``upgrade``.

Every other command only reads (it opens the store read-only); these two open it for
writing, which upgrades its schema and commits what stopped writers left in their
journals first, as a gateway's writer does when it starts.
"""

from __future__ import annotations

import click

import local_store

from ._cli_support import (
    duration_option,
    opened_for_writing,
    plural,
    print_json,
    seconds,
    store_and_json,
)
from ._paths import resolve_store_path

__all__ = ["prune", "upgrade"]


@click.command(short_help="Delete old rows in batches, keeping failures longer.")
@duration_option("--older-than", required=True, help="Delete delivered attempts older than this.")
@duration_option(
    "--keep-failed-for", required=True,
    help="Keep failed and interrupted attempts (and their stories) this long; >= --older-than.",
)
@click.option("--max-attempts", type=int, default=None, help="Also keep at most N attempts.")
@click.option("--dry-run", is_flag=True, help="Count what would go; delete nothing.")
@click.option("--batch-size", type=int, default=500, show_default=True,
              help="Most rows per delete transaction (fewer when deletes are slow).")
@click.option("--compact", is_flag=True,
              help="Then rewrite the file so it shrinks by the share deleted (needs free "
                   "disk about twice the store; holds the write lock ~10 s per GB).")
@store_and_json
def prune(
    store: str | None,
    as_json: bool,
    older_than: str,
    keep_failed_for: str,
    max_attempts: int | None,
    dry_run: bool,
    batch_size: int,
    compact: bool,
) -> None:
    """Delete old rows in small batches, keeping failures longer, then give the
    space back. Safe to run while the gateway writes.

    \b
    Example:
      otel-delivery prune --older-than 30d --keep-failed-for 90d --dry-run
    """
    older = seconds("--older-than", older_than)
    keep = seconds("--keep-failed-for", keep_failed_for)
    if compact and dry_run:
        raise click.UsageError("--compact and --dry-run: a dry run changes nothing to compact")
    path = resolve_store_path(store)
    compacted = None
    with opened_for_writing(store) as db:
        result = local_store.prune(
            db, older_than_seconds=older, keep_failed_for_seconds=keep,
            max_attempts=max_attempts, dry_run=dry_run, batch_size=batch_size,
        )
        if compact:
            compacted = local_store.compact(db, path)
    if as_json:
        print_json({**result.to_dict(), "compact": compacted and compacted.to_dict()})
        return
    counts = ", ".join(f"{table} {n}" for table, n in result.deleted.items())
    if result.dry_run:
        click.echo(f"dry run, nothing deleted; would delete: {counts}")
        return
    click.echo(f"deleted: {counts} (in {result.batches} batches)")
    click.echo(
        f"space: {result.page_count_before} -> {result.page_count_after} pages "
        f"({result.pages_freed} freed)"
    )
    if compacted:
        click.echo(
            f"compacted: {compacted.bytes_before:,} -> {compacted.bytes_after:,} bytes "
            f"in {compacted.seconds:.1f} s"
        )


@click.command(short_help="Upgrade the store and commit what stopped writers left.")
@store_and_json
def upgrade(store: str | None, as_json: bool) -> None:
    """Bring the store to this version's schema and commit the rows that stopped
    writers left in their journals: what a gateway's writer does when it starts. The
    other commands only read, and refuse a store that needs this first.

    \b
    Example:
      otel-delivery upgrade --store /var/lib/gateway/deliveries.db
    """
    path = resolve_store_path(store)
    waiting = local_store.stopped_journals(path)
    with opened_for_writing(store):
        version = local_store.SCHEMA_VERSION  # what a writable open brings it to
    left = local_store.stopped_journals(path)
    if as_json:
        print_json({"schema": version, "journals_committed": waiting - left,
                    "journals_left": left})
        return
    click.echo(f"schema {version}; {plural(waiting - left, 'journal')} of stopped writers "
               f"committed" + (f", {left} left (the store was busy)" if left else ""))
