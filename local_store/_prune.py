"""Retention: delete by age (and optionally by row count) without stalling the gateway.

Failures are kept longer than successes, and a message's inbound row, AI run and
enqueues stay as long as any attempt of its trace does, so every failure that is
kept can still be told as a whole story (``trace_story``).

Deletes go in small batches. Each batch first finds its row ids with a plain read
(no lock held), then reads, still without the lock, the pages its delete will change:
the rows, every index entry of them, and what the ``attempts`` triggers look up. On a
large store those random-key index pages are often not in memory; read inside the
lock, they made each deleted attempt cost ~0.28 ms instead of ~0.17. Then the batch
deletes its rows by primary key in its own short transaction, re-checking
the rule so a row a writer changed in between is left alone. The batch size follows
the time each delete holds the write lock: it shrinks when a delete takes longer than
10 ms and grows (from 10 rows at the start of each table), up to ``batch_size``, when
deletes are quick. Between batches
the write lock is left free for at least as long as the batch held it: SQLite's busy
handler polls with growing sleeps, and a lock that is released for only a few
microseconds would starve a waiting writer until its timeout.

While it runs, prune checkpoints the WAL itself after each write (PASSIVE, which takes
no write lock) instead of through ``wal_autocheckpoint``: an automatic checkpoint runs
inside the COMMIT statement, after the lock is released but before the statement
returns, so the batch-size rule counted it as lock time; and a WAL left to grow makes
some other connection's checkpoint large. The connection's setting is restored after.

Triggers on ``attempts`` keep the rollups and ``ai_runs.reply_pending`` right as rows
go (a deleted delivered attempt can leave its delivery failed or pending again); that
is work per deleted row, which the adaptive batch size absorbs (its reads are among
those done before the lock).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import sqlite_utils

from ._arguments import check_limit, check_seconds, resolve_now
from ._future import clamp_future_rows
from ._rescue import DEFAULT_STALE_AFTER_MS
from ._rollups import BUCKETS, HOUR_MS
from .exceptions import InvalidArgumentError

__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_VACUUM_PAGES_PER_STEP", "PruneResult", "prune"]

DEFAULT_BATCH_SIZE = 500
DEFAULT_VACUUM_PAGES_PER_STEP = 256
# Longest pause between batches: enough for any hot-path writer to get in.
_MAX_PAUSE_SECONDS = 0.05
# How long one delete batch may hold the write lock; well inside the writer's 50 ms
# hot-path bound, so a batch several times slower than planned still fits in it, and
# a writer that finds the lock taken gets in by its poll at 18 ms rather than 33 (its
# busy handler polls after 1, 3, 8, 18 and 33 ms). The batch size adapts to it, never going below
# _MIN_BATCH rows.
_BATCH_HOLD_SECONDS = 0.01
_MIN_BATCH = 10
_MAX_ID = 2**63 - 1
# (time, id) bounds; below every real row, so "nothing" when a rule does not apply.
_NOTHING = (-1, -1)

# An attempt this prune deletes (:d_* and :o_* are inclusive (time, id) bounds for
# delivered and other attempts). An attempt still ``started`` and younger than the
# stale limit may be mid-send, so it is never deleted, whatever the limits say.
_DELETED_ATTEMPT = """(
    ({a}.status = 'delivered' AND ({a}.started_at_ms, {a}.id) <= (:d_ms, :d_id))
    OR ({a}.status != 'delivered'
        AND NOT ({a}.status = 'started' AND {a}.started_at_ms >= :stale)
        AND ({a}.started_at_ms, {a}.id) <= (:o_ms, :o_id))
)"""
_OTHER_DELETABLE = (
    "x.status != 'delivered' AND NOT (x.status = 'started' AND x.started_at_ms >= :stale)"
)
# Rows of a trace that still has a kept attempt or a kept failed enqueue stay until
# keep_failed_for, so the kept failure keeps its story. The unary + keeps SQLite on the
# trace index: without statistics it would otherwise pick the status index and scan
# every failed enqueue once per row.
_TRACE_UNUSED = f"""(
    NOT EXISTS (SELECT 1 FROM attempts k WHERE k.trace_id = x.trace_id
                AND NOT {_DELETED_ATTEMPT.format(a="k")})
    AND NOT EXISTS (SELECT 1 FROM enqueues e WHERE e.trace_id = x.trace_id
                    AND +e.status = 'failed' AND +e.started_at_ms >= :keep)
)"""


@dataclass(frozen=True)
class _Pass:
    table: str
    time_column: str
    where: str
    bound: tuple[int, int]


@dataclass(frozen=True)
class PruneResult:
    """What a prune deleted (or, with ``dry_run``, would delete), and the space it gave back."""

    dry_run: bool
    deleted: dict[str, int]
    batches: int
    older_than_ms: int
    keep_failed_before_ms: int
    page_count_before: int
    page_count_after: int
    freelist_after: int
    pages_freed: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prune(
    db: sqlite_utils.Database,
    *,
    older_than_seconds: float,
    keep_failed_for_seconds: float,
    max_attempts: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    dry_run: bool = False,
    vacuum_pages_per_step: int = DEFAULT_VACUUM_PAGES_PER_STEP,
    now_ms: int | None = None,
) -> PruneResult:
    """Delete delivered attempts older than ``older_than_seconds``, failed and
    interrupted ones older than ``keep_failed_for_seconds``, and inbound rows, AI runs,
    enqueues and closed writers nothing kept refers to; then give the space back.

    ``max_attempts`` also caps the attempts kept: the oldest delivered go first, then
    the oldest others. Rows dated more than five minutes after now are first set back
    to now (counted in ``drops`` as ``future_timestamp``; see ``_future.py``), so they
    age from now on. Open the store for writing (``open_store(path)``).

    >>> prune(db, older_than_seconds=30 * 86400,
    ...       keep_failed_for_seconds=90 * 86400)  # doctest: +SKIP
    PruneResult(dry_run=False, deleted={'attempts': 1200, ...}, pages_freed=310, ...)
    """
    check_seconds("older_than_seconds", older_than_seconds)
    check_seconds("keep_failed_for_seconds", keep_failed_for_seconds)
    if keep_failed_for_seconds < older_than_seconds:
        raise InvalidArgumentError(
            f"keep_failed_for_seconds ({keep_failed_for_seconds:g}) must be at least "
            f"older_than_seconds ({older_than_seconds:g}): failures are kept longer, not shorter"
        )
    if max_attempts is not None:
        check_limit("max_attempts", max_attempts)
    check_limit("batch_size", batch_size)
    check_limit("vacuum_pages_per_step", vacuum_pages_per_step)

    now = resolve_now(now_ms)
    if not dry_run:
        # Rows dated ahead of now (a clock that jumped) would never be old enough.
        clamp_future_rows(db.conn, now)
    old = now - int(older_than_seconds * 1000)
    keep = now - int(keep_failed_for_seconds * 1000)
    params: dict[str, Any] = {"keep": keep, "stale": now - DEFAULT_STALE_AFTER_MS}
    delivered_bound = (old - 1, _MAX_ID)
    other_bound = (keep - 1, _MAX_ID)
    if max_attempts is not None:
        cap_delivered, cap_other = _cap_bounds(
            db, params, delivered_bound, other_bound, max_attempts
        )
        delivered_bound = max(delivered_bound, cap_delivered)
        other_bound = max(other_bound, cap_other)
    params.update(d_ms=delivered_bound[0], d_id=delivered_bound[1],
                  o_ms=other_bound[0], o_id=other_bound[1])

    page_count_before = _pragma(db, "page_count")
    passes = [
        _Pass("attempts", "started_at_ms", "x.status = 'delivered'", delivered_bound),
        _Pass("attempts", "started_at_ms", _OTHER_DELETABLE, other_bound),
        # Once older than keep_failed_for, nothing keeps a row.
        *(
            _Pass(table, column, f"(x.{column} < :keep OR {_TRACE_UNUSED})", (old - 1, _MAX_ID))
            for table, column in (
                ("inbound_messages", "received_at_ms"),
                ("ai_runs", "started_at_ms"),
                ("enqueues", "started_at_ms"),
            )
        ),
        # Receipts: a failed one is a failure and is kept as long; the others as long
        # as delivered attempts.
        _Pass("receipts", "at_ms", "(x.status != 'failed' OR x.at_ms < :keep)",
              (old - 1, _MAX_ID)),
        # A writer with an attempt still 'started' is how readers tell a crash from a
        # send in progress; it goes when that attempt does.
        _Pass(
            "writers", "ended_at_ms",
            "NOT EXISTS (SELECT 1 FROM attempts a WHERE a.writer_id = x.id "
            f"AND a.status = 'started' AND NOT {_DELETED_ATTEMPT.format(a='a')})",
            (keep - 1, _MAX_ID),
        ),
    ]
    deleted = dict.fromkeys(
        ("attempts", "inbound_messages", "ai_runs", "enqueues", "receipts", "writers"), 0
    )
    batches = 0
    (autocheckpoint,) = db.execute("PRAGMA wal_autocheckpoint").fetchone()
    db.execute("PRAGMA wal_autocheckpoint = 0")  # _let_writers_in checkpoints instead
    try:
        for p in passes:
            n, b = _run_pass(db, p, params, batch_size=batch_size, dry_run=dry_run)
            deleted[p.table] += n
            batches += b
        if not dry_run:
            _drop_empty_rollup_rows(db, old)
            _reclaim(db, vacuum_pages_per_step)
            _refresh_statistics(db)
    finally:
        db.execute(f"PRAGMA wal_autocheckpoint = {int(autocheckpoint)}")
    page_count_after = _pragma(db, "page_count")
    return PruneResult(
        dry_run=dry_run,
        deleted=deleted,
        batches=batches,
        older_than_ms=old,
        keep_failed_before_ms=keep,
        page_count_before=page_count_before,
        page_count_after=page_count_after,
        freelist_after=_pragma(db, "freelist_count"),
        pages_freed=max(0, page_count_before - page_count_after),
    )


def _cap_bounds(
    db: sqlite_utils.Database,
    params: dict[str, Any],
    delivered_bound: tuple[int, int],
    other_bound: tuple[int, int],
    max_attempts: int,
) -> tuple[tuple[int, int], tuple[int, int]]:
    """(time, id) bounds that also delete the oldest rows beyond ``max_attempts``.

    Worked out once, before anything is deleted, so a dry run and a real run agree.
    """
    bound = {"d_ms": delivered_bound[0], "d_id": delivered_bound[1],
             "o_ms": other_bound[0], "o_id": other_bound[1]}
    q = {**params, **bound}
    (kept,) = db.execute(
        f"SELECT COUNT(*) FROM attempts x WHERE NOT {_DELETED_ATTEMPT.format(a='x')}", q
    ).fetchone()
    excess = kept - max_attempts
    cap_delivered = cap_other = _NOTHING

    def nth_oldest(where: str, after: tuple[int, int], n: int) -> tuple[int, int]:
        row = db.execute(
            f"SELECT started_at_ms, id FROM attempts x WHERE {where} "
            "AND (x.started_at_ms, x.id) > (:after_ms, :after_id) "
            "ORDER BY x.started_at_ms, x.id LIMIT 1 OFFSET :skip",
            {**q, "after_ms": after[0], "after_id": after[1], "skip": n - 1},
        ).fetchone()
        return (int(row[0]), int(row[1]))

    for kind, where, after in (
        ("delivered", "x.status = 'delivered'", delivered_bound),
        ("other", _OTHER_DELETABLE, other_bound),
    ):
        if excess <= 0:
            break
        (available,) = db.execute(
            f"SELECT COUNT(*) FROM attempts x WHERE {where} "
            "AND (x.started_at_ms, x.id) > (:after_ms, :after_id)",
            {**q, "after_ms": after[0], "after_id": after[1]},
        ).fetchone()
        take = min(excess, available)
        if take:
            if kind == "delivered":
                cap_delivered = nth_oldest(where, after, take)
            else:
                cap_other = nth_oldest(where, after, take)
            excess -= take
    return cap_delivered, cap_other


def _run_pass(
    db: sqlite_utils.Database,
    p: _Pass,
    params: dict[str, Any],
    *,
    batch_size: int,
    dry_run: bool,
) -> tuple[int, int]:
    """Delete (or count) the rows of one pass, oldest first; return (rows, batches)."""
    in_bound = (
        f"(x.{p.time_column}, x.id) <= (:bound_ms, :bound_id) AND x.{p.time_column} IS NOT NULL"
    )
    find = (
        f"SELECT x.id, x.{p.time_column} FROM {p.table} x WHERE {in_bound} "
        f"AND (x.{p.time_column}, x.id) > (:after_ms, :after_id) AND {p.where} "
        f"ORDER BY x.{p.time_column}, x.id LIMIT :batch"
    )
    # NOT INDEXED keeps the delete on the primary key; left to itself SQLite may walk
    # the status index through every old row to find the batch's few hundred.
    delete = (
        f"DELETE FROM {p.table} AS x NOT INDEXED "
        f"WHERE x.id IN (SELECT value FROM json_each(:ids)) AND {in_bound} AND {p.where}"
    )
    warm = _warming_reads(db, p.table, f"{in_bound} AND {p.where}")
    q = {**params, "bound_ms": p.bound[0], "bound_id": p.bound[1], "batch": batch_size}
    # Keyset paging: rows a rule keeps are passed over once, not re-read by every batch.
    after = (-(2**63), -(2**63))
    total = batches = 0
    # Start small: nothing is known yet of what a row costs in this table, and a first
    # batch of ``batch_size`` rows held the lock past the writer's bound on every pass.
    size = batch_size if dry_run else min(batch_size, _MIN_BATCH)
    while True:
        found = db.execute(
            find, {**q, "batch": size, "after_ms": after[0], "after_id": after[1]}
        ).fetchall()
        if not found:
            return total, batches
        after = (int(found[-1][1]), int(found[-1][0]))
        if dry_run:
            total += len(found)
            continue
        ids = json.dumps([r[0] for r in found])
        for sql in warm:
            db.execute(sql, {**q, "ids": ids}).fetchall()
        started = time.monotonic()
        with db.atomic():
            total += db.execute(delete, {**q, "ids": ids}).rowcount
        batches += 1
        held = time.monotonic() - started
        size = _next_batch_size(size, len(found), held, batch_size)
        _let_writers_in(db, held)


_BATCH_IDS = "x.id IN (SELECT value FROM json_each(:ids))"


def _warming_reads(db: sqlite_utils.Database, table: str, where: str) -> list[str]:
    """Plain reads of the pages a delete of the batch's rows (``:ids``) will change or
    look up, to run before it takes the write lock, so the delete finds them in memory.

    Measured on a 10M-attempt store: without them the delete read ~3 KB per attempt
    from disk inside the lock, with them ~50-150 bytes.
    """
    # The rows, and the rule's own look-ups (the traces that keep a row).
    reads = [f"SELECT count(*) FROM {table} AS x NOT INDEXED WHERE {_BATCH_IDS} AND {where}"]
    # Every entry the delete removes from a full index of the table.
    for _, index, _, _, partial in db.execute(f"PRAGMA index_list({table})").fetchall():
        if partial:  # few rows, and INDEXED BY needs the index's WHERE
            continue
        columns = [r[2] for r in db.execute(f"PRAGMA index_info({index})").fetchall()]
        if None in columns:  # an expression index: nothing to match on simply
            continue
        match = " AND ".join(f"y.{c} = x.{c}" for c in columns)
        reads.append(
            f"SELECT count(*) FROM {table} AS x, {table} AS y INDEXED BY {index} "
            f"WHERE {_BATCH_IDS} AND {match}"
        )
    if table == "attempts":
        # What the triggers of _rollups read per deleted attempt: the delivery's other
        # attempts (rollups), and the trace's runs and attempts (ai_runs.reply_pending).
        reads += [
            "SELECT max(o.status) FROM attempts AS x, attempts AS o "
            f"WHERE {_BATCH_IDS} AND o.delivery_id = x.delivery_id",
            "SELECT max(t.status) FROM attempts AS x, attempts AS t "
            f"WHERE {_BATCH_IDS} AND t.trace_id = x.trace_id",
            "SELECT max(r.reply_pending) FROM attempts AS x, ai_runs AS r "
            f"WHERE {_BATCH_IDS} AND r.trace_id = x.trace_id",
        ]
    return reads


def _next_batch_size(size: int, rows: int, held_seconds: float, largest: int) -> int:
    """Aim the next batch at ``_BATCH_HOLD_SECONDS`` of lock time."""
    if held_seconds > _BATCH_HOLD_SECONDS and rows > _MIN_BATCH:
        return max(_MIN_BATCH, min(largest, int(rows * _BATCH_HOLD_SECONDS / held_seconds)))
    if held_seconds < _BATCH_HOLD_SECONDS / 2 and rows >= size:
        return min(largest, size * 2)
    return size


def _let_writers_in(db: sqlite_utils.Database, held_seconds: float) -> None:
    """Checkpoint what the last write added to the WAL (PASSIVE: no write lock taken,
    so writers are not kept out), then leave the write lock free for a while."""
    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    time.sleep(min(held_seconds, _MAX_PAUSE_SECONDS))


def _refresh_statistics(db: sqlite_utils.Database) -> None:
    """Sample the indexes so SQLite can tell a selective one from a broad one.

    Without statistics the planner guesses, and for a lookup such as "attempts of this
    trace with status delivered" (the v_undelivered view) it guesses the status index,
    reading every delivered row once per run. ``analysis_limit`` bounds the sampling
    to a few milliseconds however large the store is.
    """
    db.execute("PRAGMA analysis_limit = 400")
    db.execute("ANALYZE")


def _pragma(db: sqlite_utils.Database, name: str) -> int:
    return int(db.execute(f"PRAGMA {name}").fetchone()[0])


def _drop_empty_rollup_rows(db: sqlite_utils.Database, before_ms: int) -> None:
    """Delete rollup rows whose count fell to zero (their attempts were deleted or moved
    to another bucket) in buckets before ``before_ms``, a day of buckets per short
    transaction. A zero row counts nothing, so this never changes an answer; without
    it the rollups would keep a row for every hour and minute the store ever had.

    The triggers already keep the counts right while rows are deleted.
    """
    for table, groupings in (
        ("attempt_rollup", [None]),
        ("delivery_rollup", [g for (g,) in db.execute(
            "SELECT DISTINCT grouping FROM delivery_rollup WHERE res = ?", [HOUR_MS]
        ).fetchall()]),
    ):
        for res in BUCKETS:
            for grouping in groupings:
                where = "res = :res" + (" AND grouping = :g" if grouping else "")
                q = {"res": res, "g": grouping}
                (low,) = db.execute(f"SELECT MIN(bucket) FROM {table} WHERE {where}", q).fetchone()
                if low is None:
                    continue
                step = 86_400_000 // res
                for lo in range(int(low), before_ms // res, step):
                    started = time.monotonic()
                    with db.atomic():
                        db.execute(
                            f"DELETE FROM {table} WHERE {where} AND bucket >= :lo "
                            "AND bucket < :hi AND n = 0",
                            {**q, "lo": lo, "hi": min(lo + step, before_ms // res)},
                        )
                    _let_writers_in(db, time.monotonic() - started)


def _reclaim(db: sqlite_utils.Database, pages_per_step: int) -> None:
    """Return free pages to the file system, a few at a time (each step is a write)."""
    if _pragma(db, "auto_vacuum") != 2:  # created without INCREMENTAL: nothing to do cheaply
        return
    free = _pragma(db, "freelist_count")
    step = pages_per_step
    while free > 0:
        started = time.monotonic()
        # The pragma frees one page per step of the statement: fetch it all to finish.
        db.execute(f"PRAGMA incremental_vacuum({int(step)})").fetchall()
        held = time.monotonic() - started
        # Moving pages from the end of a large file can be slow: same lock budget as
        # the deletes.
        step = _next_batch_size(step, min(step, free), held, pages_per_step)
        _let_writers_in(db, held)
        left = _pragma(db, "freelist_count")
        if left >= free:  # a writer is reusing pages as fast as we free them
            break
        free = left
    # In WAL mode the file shrinks when the WAL is checkpointed; PASSIVE never waits.
    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
