"""What ``undelivered`` says of a pending reply, judged ahead and kept.

``undelivered`` tells, for each reply produced and not delivered, the worst thing
that happened in its trace: a failed enqueue whose delivery was never tried, or the
worst of the deliveries counted in the trace (each in the trace of its latest
attempt). Judging a trace means reading its attempts and failed enqueues; at 10M
attempts a day's 6,000 pending replies took about 90 ms that way. The judgment
depends only on the trace's own rows, so it is kept:

``ai_runs.verdict_*``
    On each pending run (``ai_runs.reply_pending``), its trace's verdict: the reason,
    delivery, attempt count and error ``undelivered`` reports, in the covering index
    it reads (``idx_runs_pending_verdict``), so a report is one range of one index.
    ``verdict_reason`` is NULL when the answer depends on whether a writer is alive
    (a delivery whose latest attempt is still ``started`` could be ``in_flight`` or
    ``interrupted``): a reader judges those traces when asked. A run that settles
    forgets its verdict.
``traces_to_judge``
    Traces whose verdict is missing or may be out of date. Triggers (``_pending.py``)
    add a trace with a pending run when one of its attempts or failed enqueues is
    written, changed or deleted, when an attempt of a delivery that spans it and
    another trace changes, and when one of its runs becomes pending.

A reader uses a verdict only for a trace that is not in ``traces_to_judge``, and
judges every other trace itself with :func:`judge_traces`, the same function that
made the verdicts: a kept verdict is the same answer computed earlier, never a
different one. :func:`refresh_verdicts` judges the waiting traces; the background
writer calls it after its batches and the upgrade once for the whole store, each in
a write transaction, so no row can change between the reading and the writing.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Collection
from typing import Any

import sqlite_utils

from ._ids import pack
from ._outcome import OUTCOMES
from ._pending import VERDICT_COLUMNS
from ._reading import lost_enqueues, rows, sqlite_order, trace_outcomes_sql

__all__ = [
    "UNDELIVERED_REASONS",
    "Verdict",
    "judge_traces",
    "refresh_verdicts",
]

#: What ``undelivered`` can say of a reply, worst first.
UNDELIVERED_REASONS = (
    "enqueue_failed", "failed", "interrupted", "abandoned", "pending_retry", "in_flight", "other",
    "no_attempt",
)

# (reason, delivery_id, attempts, error_type, error_text, depends_on_liveness)
Verdict = tuple[str, Any, int, Any, Any, bool]

# Liveness parameters under which no writer is dead, no row is stale and no retry
# window has passed (the outcome's TIMELESS present, given as parameters): a
# 'started' latest attempt is then judged 'in_flight', which marks a verdict that
# depends on it, and a failed one 'pending_retry', which readers turn into 'abandoned'
# once its window has passed (``undelivered``).
_NO_LIVENESS = {"dead": "[]", "stale": None, "abandon_before": None}

# A delivery's outcome as undelivered's reason (every outcome but 'delivered', which a
# pending reply's trace cannot have, is one), and the reason's rank, worst first.
_DELIVERY_REASONS = [r for r in UNDELIVERED_REASONS if r in OUTCOMES]
_REASON = (
    f"CASE WHEN o.outcome IN ({', '.join(repr(r) for r in _DELIVERY_REASONS)}) "
    "THEN o.outcome ELSE 'other' END"
)
_RANK = (
    f"CASE d.reason {' '.join(f'WHEN {r!r} THEN {n}' for n, r in enumerate(UNDELIVERED_REASONS))}"
    " END"
)


def _worst_by_trace(*, covered: bool) -> str:
    """Each delivery counted in the traces :traces (in the trace of its latest
    attempt) with its outcome as a reason, the attempts of all of its trace's
    deliveries, whether any of them is ``in_flight``, and ``nth`` = 1 on the first of
    its trace's worst, in the order of the deliveries' latest attempts."""
    return f"""SELECT d.trace_id, d.delivery_id, d.reason, d.error_type, d.error_text,
            SUM(d.attempts) OVER t AS trace_attempts,
            MAX(d.outcome = 'in_flight') OVER t AS any_in_flight,
            ROW_NUMBER() OVER (t ORDER BY {_RANK}, d.started_at_ms, d.delivery_id) AS nth
        FROM (SELECT o.*, {_REASON} AS reason
              FROM ({trace_outcomes_sql(undelivered_traces=covered)}) o) d
        WINDOW t AS (PARTITION BY d.trace_id)"""


def judge_traces(
    db: sqlite_utils.Database,
    traces: Collection[Any],
    liveness: dict[str, Any],
    *,
    covered: bool,
) -> dict[Any, Verdict]:
    """The verdict of each of ``traces``, as ``undelivered`` reports it.

    ``liveness`` holds the :dead and :stale parameters (``liveness_params``).
    ``covered=True`` promises that no attempt of ``traces`` delivered (each has a
    pending run): undelivered's small covering indexes (``_pending.py``) are then
    read instead of the tables.

    The last field says whether the verdict could change with liveness alone: the
    trace counts a delivery whose latest attempt is ``started`` and nothing worse
    than an interruption decides it.
    """
    if not traces:
        return {}
    params = {"traces": json.dumps(sorted(traces, key=sqlite_order)), **liveness}
    counted: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for d in rows(db, _worst_by_trace(covered=covered), params):
        counted[d["trace_id"]].append(d)
    failed_enqueues = _failed_enqueues_in(db, params, len(traces), covered)
    verdicts: dict[Any, Verdict] = {}
    for trace_id in traces:
        outs = counted.get(trace_id, ())
        attempts = outs[0]["trace_attempts"] if outs else 0
        failed = failed_enqueues.get(trace_id)
        lost = lost_enqueues(failed, {d["delivery_id"] for d in outs}) if failed else ()
        if lost:
            first = lost[0]
            verdicts[trace_id] = (
                "enqueue_failed", first["delivery_id"], attempts, first["error_type"],
                first["error_text"], False,
            )
        elif outs:
            worst = next(d for d in outs if d["nth"] == 1)
            live = worst["reason"] != "failed" and bool(worst["any_in_flight"])
            verdicts[trace_id] = (
                worst["reason"], worst["delivery_id"], attempts, worst["error_type"],
                worst["error_text"], live,
            )
        else:
            verdicts[trace_id] = ("no_attempt", None, 0, None, None, False)
    return verdicts


def _failed_enqueues_in(
    db: sqlite_utils.Database, trace_params: dict[str, Any], n_traces: int, covered: bool
) -> dict[Any, list[dict[str, Any]]]:
    """The failed enqueues of the traces :traces, by trace, in id order."""
    by_trace: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    if not n_traces:
        return by_trace
    in_traces = "trace_id IN (SELECT packed_id(value) FROM json_each(:traces))"
    if covered:
        # idx_enqueues_failed_trace holds every column read here
        status = "status"
    else:
        # A few traces: probe the trace index for each (+status keeps SQLite off the
        # status index). Many: read every failed enqueue once through the status index.
        (n_failed,) = db.execute(
            "SELECT COUNT(*) FROM enqueues WHERE status = 'failed'"
        ).fetchone()
        status = "+status" if n_traces * 4 < n_failed else "status"
    for e in rows(
        db,
        "SELECT id, trace_id, status, delivery_id, error_type, error_text FROM enqueues "
        f"WHERE {status} = 'failed' AND {in_traces} ORDER BY id",
        trace_params,
    ):
        by_trace[e["trace_id"]].append(e)
    return by_trace


def refresh_verdicts(db: sqlite_utils.Database, *, limit: int | None = None) -> int:
    """Judge the traces waiting in ``traces_to_judge`` (at most ``limit`` of them) and
    keep their verdicts on their pending runs; return how many were taken.

    Call it inside a write transaction (``BEGIN IMMEDIATE``): the judging reads rows
    that another writer must not change before the verdicts are written.
    """
    waiting = [
        t for (t,) in db.execute(
            "SELECT trace_id FROM traces_to_judge LIMIT :limit",
            {"limit": -1 if limit is None else limit},
        )
    ]
    if not waiting:
        return 0
    taken = {"traces": json.dumps(waiting)}
    pending = {
        t for (t,) in db.execute(
            "SELECT DISTINCT trace_id FROM ai_runs WHERE reply_pending = 1 "
            "AND trace_id IN (SELECT packed_id(value) FROM json_each(:traces))",
            taken,
        )
    }
    judged = judge_traces(db, pending, _NO_LIVENESS, covered=True)
    db.conn.executemany(
        f"UPDATE ai_runs SET {', '.join(f'{c} = ?' for c in VERDICT_COLUMNS)} "
        "WHERE trace_id = ? AND reply_pending = 1",
        [(None if v[5] else v[0], pack(v[1]), v[2], v[3], v[4], pack(t))
         for t, v in judged.items()],
    )
    db.execute(
        "DELETE FROM traces_to_judge "
        "WHERE trace_id IN (SELECT packed_id(value) FROM json_each(:traces))",
        taken,
    )
    return len(waiting)
