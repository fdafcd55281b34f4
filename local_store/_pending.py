"""What ``undelivered`` reads, kept by triggers so it never scans the store.

``ai_runs.reply_pending`` is 1 when a run produced a reply and no
attempt of its trace has delivered; triggers on both tables keep it, whichever row is
written first, and a partial index holds only the pending runs.

``undelivered`` reads from its own partial covering indexes: attempts
that did not deliver, failed enqueues, and pending runs. Every attempt of a pending
run's trace is in the first, since none of them delivered. ``split_deliveries``, kept
by triggers, lists (at least) the deliveries with attempts in more than one trace;
only those need reading again by delivery id.

``ai_runs.verdict_*`` keep, on each pending run, what ``undelivered``
says of it, judged ahead by the writers (``_verdicts.py``); triggers on attempts,
enqueues and runs queue the traces whose verdict a change may alter in
``traces_to_judge``, and readers judge the queued traces themselves.
"""

from __future__ import annotations

__all__ = [
    "REPLY_PENDING_SQL",
    "SPLIT_DELIVERIES_SQL",
    "TRACE_VERDICTS_SQL",
    "UNSENT_INDEXES_SQL",
    "VERDICT_COLUMNS",
    "VERDICT_TRIGGERS",
]

# -- ai_runs.reply_pending ----------------------------------------------------------

_DELIVERED_IN = (
    "EXISTS (SELECT 1 FROM attempts a WHERE a.trace_id = {t} AND +a.status = 'delivered')"
)


def _pending(r: str) -> str:
    return f"({r}.reply_produced IS 1 AND NOT {_DELIVERED_IN.format(t=f'{r}.trace_id')})"


def _recheck_trace(t: str) -> str:
    return (
        f"UPDATE ai_runs SET reply_pending = {_pending('ai_runs')} "
        f"WHERE trace_id = {t} AND reply_pending IS NOT {_pending('ai_runs')};"
    )



# The pending runs by trace (a delivered attempt clears its trace's pending runs
# without reading the trace's other runs); by start, undelivered's window reads
# idx_runs_pending_verdict (below).
REPLY_PENDING_SQL = f"""
CREATE INDEX IF NOT EXISTS idx_runs_pending_trace ON ai_runs (trace_id) WHERE reply_pending = 1;
-- A run written after its trace's delivered attempt (runs go in background batches)
-- is judged when it arrives.
CREATE TRIGGER ai_runs_pending_ai AFTER INSERT ON ai_runs WHEN NEW.reply_produced = 1 BEGIN
    UPDATE ai_runs SET reply_pending = 1
    WHERE id = NEW.id AND NOT {_DELIVERED_IN.format(t="NEW.trace_id")};
END;
CREATE TRIGGER ai_runs_pending_au AFTER UPDATE OF reply_produced, trace_id ON ai_runs BEGIN
    UPDATE ai_runs SET reply_pending = {_pending('ai_runs')} WHERE id = NEW.id;
END;
CREATE TRIGGER attempts_pending_ai AFTER INSERT ON attempts
WHEN NEW.status = 'delivered' BEGIN
    UPDATE ai_runs SET reply_pending = 0 WHERE trace_id = NEW.trace_id AND reply_pending = 1;
END;
CREATE TRIGGER attempts_pending_au_delivered AFTER UPDATE OF status, trace_id ON attempts
WHEN NEW.status = 'delivered' BEGIN
    UPDATE ai_runs SET reply_pending = 0 WHERE trace_id = NEW.trace_id AND reply_pending = 1;
END;
-- Rare: a delivered row changed or moved to another trace.
CREATE TRIGGER attempts_pending_au_undelivered AFTER UPDATE OF status, trace_id ON attempts
WHEN OLD.status = 'delivered'
     AND (NEW.status IS NOT 'delivered' OR NEW.trace_id IS NOT OLD.trace_id) BEGIN
    {_recheck_trace("OLD.trace_id")}
END;
-- Prune deleting a delivered attempt: its trace's runs may be pending again.
CREATE TRIGGER attempts_pending_ad AFTER DELETE ON attempts
WHEN OLD.status = 'delivered' BEGIN
    {_recheck_trace("OLD.trace_id")}
END;
"""


# -- undelivered's own indexes ----------------------------------------------------------

# A pending run's trace has no delivered attempt, so every attempt undelivered reads
# is in idx_attempts_unsent: about one attempt in twenty, with what judging needs,
# so a read touches a small index and never the table. The same for failed enqueues
# (the pending runs themselves are in idx_runs_pending_verdict).
UNSENT_INDEXES_SQL = """
CREATE INDEX IF NOT EXISTS idx_attempts_unsent ON attempts (
    trace_id, delivery_id, attempt, started_at_ms, status, final, max_attempts,
    writer_id, channel, error_type, failure_class, error_text
) WHERE status != 'delivered';
CREATE INDEX IF NOT EXISTS idx_enqueues_failed_trace
    ON enqueues (trace_id, status, delivery_id, error_type, error_text)
    WHERE status = 'failed';
"""



def _in_other_trace(row: str) -> str:
    return (
        f"EXISTS (SELECT 1 FROM attempts o WHERE o.delivery_id = {row}.delivery_id "
        f"AND o.trace_id IS NOT {row}.trace_id)"
    )


# split_deliveries holds (at least) every delivery with attempts in more than one
# trace: a reader that finds a delivery's attempts by trace must read such a delivery
# again, whole, by delivery id. Kept as a superset: a delivery leaves it only when
# its last attempt is deleted, so an edit never has to recheck the whole delivery.
SPLIT_DELIVERIES_SQL = f"""
CREATE TABLE IF NOT EXISTS split_deliveries (delivery_id PRIMARY KEY) WITHOUT ROWID;
CREATE TRIGGER attempts_split_ai AFTER INSERT ON attempts
WHEN {_in_other_trace("NEW")} BEGIN
    INSERT OR IGNORE INTO split_deliveries VALUES (NEW.delivery_id);
END;
CREATE TRIGGER attempts_split_au AFTER UPDATE OF delivery_id, trace_id ON attempts
WHEN {_in_other_trace("NEW")} BEGIN
    INSERT OR IGNORE INTO split_deliveries VALUES (NEW.delivery_id);
END;
CREATE TRIGGER attempts_split_ad AFTER DELETE ON attempts
WHEN EXISTS (SELECT 1 FROM split_deliveries s WHERE s.delivery_id = OLD.delivery_id)
     AND NOT EXISTS (SELECT 1 FROM attempts o WHERE o.delivery_id = OLD.delivery_id) BEGIN
    DELETE FROM split_deliveries WHERE delivery_id = OLD.delivery_id;
END;
"""


# -- undelivered's kept verdicts ---------------------------------------------------------

VERDICT_TRIGGERS = (
    "attempts_verdict_ai", "attempts_verdict_ai_split", "attempts_verdict_au",
    "attempts_verdict_au_split", "attempts_verdict_ad", "attempts_verdict_ad_split",
    "ai_runs_verdict_ai", "ai_runs_verdict_au_pending", "ai_runs_verdict_au_settled",
    "ai_runs_verdict_au_forget", "ai_runs_verdict_ad", "enqueues_verdict_ai",
    "enqueues_verdict_au", "enqueues_verdict_ad",
)
VERDICT_COLUMNS = (
    "verdict_reason", "verdict_delivery_id", "verdict_attempts", "verdict_error_type",
    "verdict_error_text",
)

_HAS_PENDING_RUN = (
    "EXISTS (SELECT 1 FROM ai_runs r WHERE r.trace_id = {t} AND r.reply_pending = 1)"
)
# Not "INSERT OR IGNORE": inside a trigger fired by an upsert's update (the writer's
# END_SQL), the upsert's conflict handling (ABORT) overrides a trigger statement's OR
# clause; an upsert clause of the statement's own is kept.
_NOTHING = "ON CONFLICT (trace_id) DO NOTHING;"
_IS_SPLIT = "EXISTS (SELECT 1 FROM split_deliveries s WHERE s.delivery_id = {d})"
# What a verdict is made of (_verdicts.judge_traces): an update of other columns
# leaves every verdict as it was.
_JUDGED = (
    "delivery_id, trace_id, attempt, started_at_ms, status, final, max_attempts, "
    "error_type, error_text"
)


def _judge_again(t: str, unless: str | None = None) -> str:
    """Queue trace ``t`` to be judged again if it has a pending run (and not ``unless``)."""
    but = f"NOT ({unless}) AND " if unless else ""
    return (
        f"INSERT INTO traces_to_judge SELECT {t} "
        f"WHERE {but}{_HAS_PENDING_RUN.format(t=t)} {_NOTHING}"
    )


def _judge_delivery_again(d: str, unless: str | None = None) -> str:
    """Queue every trace with an attempt of delivery ``d`` and a pending run (and not
    ``unless``)."""
    but = f"NOT ({unless}) AND " if unless else ""
    return (
        "INSERT INTO traces_to_judge SELECT DISTINCT o.trace_id FROM attempts o "
        f"WHERE {but}o.delivery_id = {d} "
        f"AND {_HAS_PENDING_RUN.format(t='o.trace_id')} {_NOTHING}"
    )


def _unqueue_if_settled(t: str) -> str:
    """Take trace ``t`` off the queue once it has no pending run left."""
    return (
        f"DELETE FROM traces_to_judge WHERE trace_id = {t} "
        f"AND NOT {_HAS_PENDING_RUN.format(t=t)};"
    )


# A verdict is judged from the attempts of the deliveries counted in its trace (each
# in the trace of its latest attempt) and from the trace's failed enqueues. Any change
# to those queues the trace; a delivery with attempts in several traces (in
# split_deliveries, or becoming so) queues all of them. A delivered attempt needs no
# queueing of its own trace: it settles the trace's pending runs. Trigger order does
# not matter: a queue entry only ever costs a judging.
#
# The verdict is kept on each pending run, in the covering index undelivered reads
# (so a report is one range of one index); a run that settles forgets it.
TRACE_VERDICTS_SQL = f"""
CREATE TABLE IF NOT EXISTS traces_to_judge (trace_id PRIMARY KEY) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idx_runs_pending_verdict ON ai_runs (
    started_at_ms, id, ended_at_ms, trace_id, inbound_id, channel, reply_pending,
    {", ".join(VERDICT_COLUMNS)}
) WHERE reply_pending = 1;
CREATE TRIGGER attempts_verdict_ai AFTER INSERT ON attempts
WHEN NEW.status IS NOT 'delivered' BEGIN
    {_judge_again("NEW.trace_id")}
END;
CREATE TRIGGER attempts_verdict_ai_split AFTER INSERT ON attempts
WHEN {_in_other_trace("NEW")} BEGIN
    {_judge_delivery_again("NEW.delivery_id")}
END;
CREATE TRIGGER attempts_verdict_au AFTER UPDATE OF {_JUDGED} ON attempts BEGIN
    {_judge_again("NEW.trace_id")}
    {_judge_again("OLD.trace_id", unless="OLD.trace_id IS NEW.trace_id")}
END;
CREATE TRIGGER attempts_verdict_au_split AFTER UPDATE OF {_JUDGED} ON attempts
WHEN {_IS_SPLIT.format(d="NEW.delivery_id")} OR {_IS_SPLIT.format(d="OLD.delivery_id")}
     OR ((NEW.trace_id IS NOT OLD.trace_id OR NEW.delivery_id IS NOT OLD.delivery_id)
         AND {_in_other_trace("NEW")}) BEGIN
    {_judge_delivery_again("NEW.delivery_id")}
    {_judge_delivery_again("OLD.delivery_id", unless="OLD.delivery_id IS NEW.delivery_id")}
END;
CREATE TRIGGER attempts_verdict_ad AFTER DELETE ON attempts
WHEN OLD.status IS NOT 'delivered' BEGIN
    {_judge_again("OLD.trace_id")}
END;
CREATE TRIGGER attempts_verdict_ad_split AFTER DELETE ON attempts
WHEN {_IS_SPLIT.format(d="OLD.delivery_id")} BEGIN
    {_judge_delivery_again("OLD.delivery_id")}
END;
CREATE TRIGGER ai_runs_verdict_ai AFTER INSERT ON ai_runs WHEN NEW.reply_pending = 1 BEGIN
    INSERT INTO traces_to_judge VALUES (NEW.trace_id) {_NOTHING}
END;
CREATE TRIGGER ai_runs_verdict_au_pending AFTER UPDATE OF reply_pending, trace_id ON ai_runs
WHEN NEW.reply_pending = 1 AND (OLD.reply_pending IS NOT 1 OR NEW.trace_id IS NOT OLD.trace_id)
BEGIN
    INSERT INTO traces_to_judge VALUES (NEW.trace_id) {_NOTHING}
END;
CREATE TRIGGER ai_runs_verdict_au_settled AFTER UPDATE OF reply_pending, trace_id ON ai_runs
WHEN OLD.reply_pending = 1 AND (NEW.reply_pending IS NOT 1 OR NEW.trace_id IS NOT OLD.trace_id)
BEGIN
    {_unqueue_if_settled("OLD.trace_id")}
END;
CREATE TRIGGER ai_runs_verdict_au_forget AFTER UPDATE OF reply_pending, trace_id ON ai_runs
WHEN OLD.verdict_attempts IS NOT NULL
     AND (NEW.reply_pending IS NOT 1 OR NEW.trace_id IS NOT OLD.trace_id) BEGIN
    UPDATE ai_runs SET {", ".join(f"{c} = NULL" for c in VERDICT_COLUMNS)} WHERE id = NEW.id;
END;
CREATE TRIGGER ai_runs_verdict_ad AFTER DELETE ON ai_runs WHEN OLD.reply_pending = 1 BEGIN
    {_unqueue_if_settled("OLD.trace_id")}
END;
CREATE TRIGGER enqueues_verdict_ai AFTER INSERT ON enqueues WHEN NEW.status = 'failed' BEGIN
    {_judge_again("NEW.trace_id")}
END;
CREATE TRIGGER enqueues_verdict_au
AFTER UPDATE OF status, trace_id, delivery_id, error_type, error_text ON enqueues
WHEN OLD.status = 'failed' OR NEW.status = 'failed' BEGIN
    {_judge_again("NEW.trace_id")}
    {_judge_again("OLD.trace_id", unless="OLD.trace_id IS NEW.trace_id")}
END;
CREATE TRIGGER enqueues_verdict_ad AFTER DELETE ON enqueues WHEN OLD.status = 'failed' BEGIN
    {_judge_again("OLD.trace_id")}
END;
"""

