"""Derived data kept by triggers, so the operator's questions do not scan the store.

Two rollups answer ``summary`` and ``health`` (schema m005):

``attempt_rollup``
    Attempts counted by time bucket, channel, status and (for failed attempts) error
    type and failure class. Every attempt counts in the bucket of its ``started_at_ms``,
    except attempts still ``started``: what those mean depends on whether their writer
    is alive when the question is asked, so readers count them from the rows.

``delivery_rollup``
    Deliveries counted by bucket, grouping (``channel``, ``status``, ``error``, and the
    totals ``all`` and ``failed``), group key and final outcome. A delivery counts once
    per group key it has an attempt with, in the bucket of its latest attempt with that
    key: a window that reaches to the present holds that attempt exactly when it holds
    any attempt of the pair. Deliveries with any attempt still ``started`` are left
    out (their outcome depends on liveness too) and are read from the rows.

Each rollup is kept at two resolutions (``res`` is the bucket width in ms): hours for
the bulk of a window and minutes for its first, partial hour; the partial first minute
is read from the rows. Key columns hold ``x''`` (an empty blob, which no text equals)
for NULL so the primary key can do the counting.

The triggers recompute a delivery's contribution from its attempts (found through
``idx_attempts_delivery``): subtract what it contributed before a change, add what it
contributes after. That makes any change exact, including prune's deletes and a
rescue's ``started`` -> ``interrupted``, at the cost of a few small upserts per attempt
row written.

The one way around them: ``INSERT OR REPLACE`` into ``attempts`` deletes the row it
replaces without firing delete triggers (unless ``PRAGMA recursive_triggers`` is on);
nothing in otel-delivery writes that way.

``ai_runs.reply_pending`` (schema m006) is 1 when a run produced a reply and no
attempt of its trace has delivered; triggers on both tables keep it, whichever row is
written first, and a partial index holds only the pending runs.

``undelivered`` reads from its own partial covering indexes (schema m007): attempts
that did not deliver, failed enqueues, and pending runs. Every attempt of a pending
run's trace is in the first, since none of them delivered. ``split_deliveries``, kept
by triggers, lists (at least) the deliveries with attempts in more than one trace;
only those need reading again by delivery id.

``ai_runs.verdict_*`` (schema m009) keep, on each pending run, what ``undelivered``
says of it, judged ahead by the writers (``_verdicts.py``); triggers on attempts,
enqueues and runs queue the traces whose verdict a change may alter in
``traces_to_judge``, and readers judge the queued traces themselves.
"""

from __future__ import annotations

__all__ = [
    "BUCKETS",
    "HOUR_MS",
    "MINUTE_MS",
    "REPLY_PENDING_BACKFILL_SQL",
    "REPLY_PENDING_SQL",
    "REPLY_PENDING_TRIGGERS",
    "ROLLUP_BACKFILL_SQL",
    "ROLLUP_TABLES_SQL",
    "ROLLUP_TRIGGERS",
    "ROLLUP_TRIGGERS_SQL",
    "contributions",
    "decode",
    "encode",
]

HOUR_MS = 3_600_000
MINUTE_MS = 60_000
BUCKETS = (HOUR_MS, MINUTE_MS)
_RESOLUTIONS = f"(SELECT {HOUR_MS} AS res UNION ALL SELECT {MINUTE_MS})"
NULL_KEY = "x''"


def encode(expr: str) -> str:
    return f"COALESCE({expr}, {NULL_KEY})"


def decode(expr: str) -> str:
    return f"NULLIF({expr}, {NULL_KEY})"


def contributions(xs: str, latest_filter: str = "1", table: str = "attempts") -> str:
    """Rows (delivery_id, grouping, k1, k2, at, outcome): what each delivery in the
    attempt set ``xs`` (a FROM-clause table expression with the attempts' columns)
    contributes to ``delivery_rollup``, ``at`` being the latest start of the pair.

    ``latest_filter`` restricts the attempts the latest-attempt lookup sees (alias
    ``l``) the way ``xs`` is restricted. The outcome is :func:`outcome_of`'s, for a
    delivery with no ``started`` attempt; deliveries with one contribute nothing.
    """
    outcome = f"""CASE
        WHEN MAX(x.status = 'started') THEN NULL
        WHEN MAX(x.status = 'delivered') THEN 'delivered'
        WHEN MAX(x.status = 'failed' AND (x.final = 1 OR x.attempt >= x.max_attempts))
            THEN 'failed'
        ELSE (SELECT CASE l.status WHEN 'failed' THEN 'pending_retry'
                                   WHEN 'interrupted' THEN 'interrupted' ELSE 'other' END
              FROM {table} l WHERE l.delivery_id = x.delivery_id AND {latest_filter}
              ORDER BY l.attempt DESC, l.started_at_ms DESC, l.id DESC LIMIT 1)
    END"""
    none = NULL_KEY
    return f"""SELECT p.delivery_id, p.grouping, p.k1, p.k2, p.at, o.outcome
    FROM (SELECT x.delivery_id, {outcome} AS outcome FROM {xs} x GROUP BY x.delivery_id) o
    JOIN (
        SELECT x.delivery_id, 'all' AS grouping, {none} AS k1, {none} AS k2,
               MAX(x.started_at_ms) AS at
        FROM {xs} x GROUP BY x.delivery_id
        UNION ALL
        SELECT x.delivery_id, 'channel', {encode('x.channel')}, {none}, MAX(x.started_at_ms)
        FROM {xs} x GROUP BY x.delivery_id, x.channel
        UNION ALL
        SELECT x.delivery_id, 'status', x.status, {none}, MAX(x.started_at_ms)
        FROM {xs} x GROUP BY x.delivery_id, x.status
        UNION ALL
        SELECT x.delivery_id, 'failed', {none}, {none}, MAX(x.started_at_ms)
        FROM {xs} x WHERE +x.status = 'failed' GROUP BY x.delivery_id
        UNION ALL
        SELECT x.delivery_id, 'error', {encode('x.error_type')}, {encode('x.failure_class')},
               MAX(x.started_at_ms)
        FROM {xs} x WHERE +x.status = 'failed'
        GROUP BY x.delivery_id, x.error_type, x.failure_class
    ) p ON p.delivery_id = o.delivery_id
    WHERE o.outcome IS NOT NULL"""


def _recount(sign: str, skip: str) -> str:
    """:func:`contributions` of delivery ``NEW.delivery_id`` (less row ``skip``, when not
    NULL), added to ``delivery_rollup`` times ``sign``."""
    xs = f"(SELECT * FROM attempts a WHERE a.delivery_id = NEW.delivery_id AND a.id IS NOT {skip})"
    return f"""INSERT INTO delivery_rollup (res, grouping, bucket, k1, k2, outcome, n)
    SELECT r.res, c.grouping, c.at / r.res, c.k1, c.k2, c.outcome, {sign}
    FROM ({contributions(xs, f"l.id IS NOT {skip}")}) c, {_RESOLUTIONS} r WHERE 1
    ON CONFLICT (res, grouping, bucket, k1, k2, outcome) DO UPDATE SET n = n + excluded.n;"""


def _add_delivery(d: str, sign: int, excluded: str | None = None) -> str:
    """Add delivery ``d``'s contributions (less row ``excluded``) times ``sign``.

    The statement is written once, in the trigger on ``rollup_recount`` (a table that
    never keeps a row); the triggers on ``attempts`` insert into it. Every connection
    parses the schema when it opens, and a copy per trigger would cost each CLI
    query about a millisecond.
    """
    return f"INSERT INTO rollup_recount VALUES ({d}, {sign}, {excluded or 'NULL'});"


def _add_attempt(row: str, sign: int) -> str:
    failed = f"{row}.status = 'failed'"
    return f"""INSERT INTO attempt_rollup
        (res, bucket, channel, status, error_type, failure_class, n)
    SELECT r.res, {row}.started_at_ms / r.res, {encode(f'{row}.channel')}, {row}.status,
           CASE WHEN {failed} THEN {encode(f'{row}.error_type')} ELSE {NULL_KEY} END,
           CASE WHEN {failed} THEN {encode(f'{row}.failure_class')} ELSE {NULL_KEY} END,
           {sign}
    FROM {_RESOLUTIONS} r WHERE 1
    ON CONFLICT (res, bucket, channel, status, error_type, failure_class)
    DO UPDATE SET n = n + excluded.n;"""


# The columns a delivery's contribution depends on.
_WATCHED = (
    "delivery_id, attempt, max_attempts, channel, status, error_type, failure_class, "
    "final, started_at_ms"
)

# Key columns have no declared type (no affinity): values are kept exactly as written.
ROLLUP_TABLES_SQL = """
CREATE TABLE IF NOT EXISTS attempt_rollup (
    res INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    channel NOT NULL,
    status TEXT NOT NULL,
    error_type NOT NULL,
    failure_class NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (res, bucket, channel, status, error_type, failure_class)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS rollup_recount (delivery_id TEXT, sign INTEGER, skip_id INTEGER);

CREATE TABLE IF NOT EXISTS delivery_rollup (
    res INTEGER NOT NULL,
    grouping TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    k1 NOT NULL,
    k2 NOT NULL,
    outcome TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (res, grouping, bucket, k1, k2, outcome)
) WITHOUT ROWID;
"""

def _add_alone(row: str, sign: int) -> str:
    """:func:`_add_delivery` for a delivery whose only attempt is ``row``: the same
    rows, from the row's own values, without reading the table."""
    failed = f"{row}.status = 'failed'"
    outcome = f"""CASE {row}.status WHEN 'delivered' THEN 'delivered'
        WHEN 'failed' THEN CASE WHEN {row}.final = 1 OR {row}.attempt >= {row}.max_attempts
                                THEN 'failed' ELSE 'pending_retry' END
        WHEN 'interrupted' THEN 'interrupted' ELSE 'other' END"""
    return f"""INSERT INTO delivery_rollup (res, grouping, bucket, k1, k2, outcome, n)
    SELECT r.res, g.grouping, {row}.started_at_ms / r.res, g.k1, g.k2, {outcome}, {sign}
    FROM (SELECT 'all' AS grouping, {NULL_KEY} AS k1, {NULL_KEY} AS k2
          UNION ALL SELECT 'channel', {encode(f'{row}.channel')}, {NULL_KEY}
          UNION ALL SELECT 'status', {row}.status, {NULL_KEY}
          UNION ALL SELECT 'failed', {NULL_KEY}, {NULL_KEY} WHERE {failed}
          UNION ALL SELECT 'error', {encode(f'{row}.error_type')},
                           {encode(f'{row}.failure_class')} WHERE {failed}) g,
         {_RESOLUTIONS} r
    WHERE 1
    ON CONFLICT (res, grouping, bucket, k1, k2, outcome) DO UPDATE SET n = n + excluded.n;"""


def _others(row: str) -> str:
    """Whether ``row``'s delivery has attempts besides it (one index probe)."""
    return (
        f"EXISTS (SELECT 1 FROM attempts o WHERE o.delivery_id = {row}.delivery_id "
        f"AND o.id != {row}.id)"
    )


# Most deliveries have one attempt: their triggers work from the row alone (the
# *_alone triggers); the others recompute the delivery from its attempts.
ROLLUP_TRIGGERS_SQL = f"""
CREATE TRIGGER rollup_recount_bi BEFORE INSERT ON rollup_recount BEGIN
    {_recount("NEW.sign", "NEW.skip_id")}
    SELECT RAISE(IGNORE);
END;
CREATE TRIGGER attempts_rollup_ai AFTER INSERT ON attempts
WHEN NEW.status != 'started' BEGIN
    {_add_attempt("NEW", 1)}
END;
CREATE TRIGGER attempts_rollup_ai_alone AFTER INSERT ON attempts
WHEN NEW.status != 'started' AND NOT {_others("NEW")} BEGIN
    {_add_alone("NEW", 1)}
END;
-- A later attempt: the delivery's earlier attempts stop counting as they were. A
-- 'started' row takes the whole delivery out (readers count it from the rows).
CREATE TRIGGER attempts_rollup_ai_delivery AFTER INSERT ON attempts
WHEN {_others("NEW")} BEGIN
    {_add_delivery("NEW.delivery_id", -1, excluded="NEW.id")}
    {_add_delivery("NEW.delivery_id", 1)}
END;
-- An update (an outcome written over its start row, a rescue): out before, in after.
-- A delivery with a 'started' row contributes nothing, so that side can be skipped.
CREATE TRIGGER attempts_rollup_bu BEFORE UPDATE OF {_WATCHED} ON attempts
WHEN OLD.status != 'started' BEGIN
    {_add_attempt("OLD", -1)}
    {_add_delivery("OLD.delivery_id", -1)}
END;
CREATE TRIGGER attempts_rollup_bu_moved BEFORE UPDATE OF delivery_id ON attempts
WHEN NEW.delivery_id IS NOT OLD.delivery_id BEGIN
    {_add_delivery("NEW.delivery_id", -1)}
END;
CREATE TRIGGER attempts_rollup_au AFTER UPDATE OF {_WATCHED} ON attempts
WHEN NEW.status != 'started' BEGIN
    {_add_attempt("NEW", 1)}
END;
CREATE TRIGGER attempts_rollup_au_alone AFTER UPDATE OF {_WATCHED} ON attempts
WHEN NEW.status != 'started' AND NOT {_others("NEW")} BEGIN
    {_add_alone("NEW", 1)}
END;
CREATE TRIGGER attempts_rollup_au_delivery AFTER UPDATE OF {_WATCHED} ON attempts
WHEN NEW.status != 'started' AND {_others("NEW")} BEGIN
    {_add_delivery("NEW.delivery_id", 1)}
END;
CREATE TRIGGER attempts_rollup_au_moved AFTER UPDATE OF delivery_id ON attempts
WHEN NEW.delivery_id IS NOT OLD.delivery_id BEGIN
    {_add_delivery("OLD.delivery_id", 1)}
END;
-- A delete (prune): the delivery as it was goes out, what is left of it comes back.
CREATE TRIGGER attempts_rollup_bd BEFORE DELETE ON attempts
WHEN OLD.status != 'started' AND NOT {_others("OLD")} BEGIN
    {_add_alone("OLD", -1)}
END;
CREATE TRIGGER attempts_rollup_bd_delivery BEFORE DELETE ON attempts
WHEN OLD.status != 'started' AND {_others("OLD")} BEGIN
    {_add_delivery("OLD.delivery_id", -1)}
END;
CREATE TRIGGER attempts_rollup_ad AFTER DELETE ON attempts
WHEN OLD.status != 'started' BEGIN
    {_add_attempt("OLD", -1)}
END;
CREATE TRIGGER attempts_rollup_ad_delivery AFTER DELETE ON attempts
WHEN EXISTS (SELECT 1 FROM attempts o WHERE o.delivery_id = OLD.delivery_id) BEGIN
    {_add_delivery("OLD.delivery_id", 1)}
END;
"""
# Trigger names, so a re-run of the migration can replace them (with those of
# earlier drafts of it).
ROLLUP_TRIGGERS = (
    "rollup_recount_bi", "attempts_rollup_ai", "attempts_rollup_ai_add", "attempts_rollup_ai_alone",
    "attempts_rollup_ai_delivery", "attempts_rollup_bu", "attempts_rollup_bu_delivery",
    "attempts_rollup_bu_moved", "attempts_rollup_au", "attempts_rollup_au_alone",
    "attempts_rollup_au_delivery", "attempts_rollup_au_moved", "attempts_rollup_bd",
    "attempts_rollup_bd_delivery", "attempts_rollup_ad", "attempts_rollup_ad_delivery",
)

# The backfill reads the attempts once, in table order, into a temporary copy with a
# covering index by delivery: read through idx_attempts_delivery instead, a large
# store's rows would be fetched in random order (about 20 minutes at 10M attempts).
_BACKFILL_COLUMNS = (
    "delivery_id, attempt, started_at_ms, id, status, final, max_attempts, channel, "
    "error_type, failure_class"
)
ROLLUP_BACKFILL_SQL = f"""
DELETE FROM attempt_rollup;
DELETE FROM delivery_rollup;
DROP TABLE IF EXISTS temp.rollup_rows;
CREATE TEMP TABLE rollup_rows AS SELECT {_BACKFILL_COLUMNS} FROM attempts;
CREATE INDEX temp.rollup_rows_delivery ON rollup_rows ({_BACKFILL_COLUMNS});
INSERT INTO attempt_rollup (res, bucket, channel, status, error_type, failure_class, n)
SELECT r.res, a.started_at_ms / r.res, {encode('a.channel')}, a.status,
       CASE WHEN a.status = 'failed' THEN {encode('a.error_type')} ELSE {NULL_KEY} END,
       CASE WHEN a.status = 'failed' THEN {encode('a.failure_class')} ELSE {NULL_KEY} END,
       COUNT(*)
FROM rollup_rows a, {_RESOLUTIONS} r WHERE a.status != 'started'
GROUP BY 1, 2, 3, 4, 5, 6;
INSERT INTO delivery_rollup (res, grouping, bucket, k1, k2, outcome, n)
SELECT r.res, c.grouping, c.at / r.res, c.k1, c.k2, c.outcome, COUNT(*)
FROM ({contributions("rollup_rows", table="rollup_rows")}) c, {_RESOLUTIONS} r
GROUP BY 1, 2, 3, 4, 5, 6;
DROP TABLE temp.rollup_rows;
"""

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


REPLY_PENDING_TRIGGERS = (
    "ai_runs_pending_ai", "ai_runs_pending_au", "attempts_pending_ai",
    "attempts_pending_au", "attempts_pending_au_delivered", "attempts_pending_au_undelivered",
    "attempts_pending_ad",
)

# The pending runs by start (undelivered's window; m007 replaces idx_runs_pending with
# the covering idx_runs_pending_cover) and by trace (a delivered attempt clears its
# trace's pending runs without reading the trace's other runs).
REPLY_PENDING_SQL = f"""
CREATE INDEX IF NOT EXISTS idx_runs_pending ON ai_runs (started_at_ms) WHERE reply_pending = 1;
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

# NOT IN builds the set of delivered traces from one pass over attempts (+status keeps
# it a scan in table order), instead of one trace-index probe per run.
REPLY_PENDING_BACKFILL_SQL = """
UPDATE ai_runs SET reply_pending = 0 WHERE reply_pending != 0;
UPDATE ai_runs SET reply_pending = 1
WHERE reply_produced IS 1
  AND trace_id NOT IN (SELECT a.trace_id FROM attempts a WHERE +a.status = 'delivered');
"""

# -- undelivered's own indexes (schema m007) ------------------------------------------

# A pending run's trace has no delivered attempt, so every attempt undelivered reads
# is in idx_attempts_unsent: about one attempt in twenty, with what judging needs,
# so a read touches a small index and never the table. The same for failed enqueues
# and for the pending runs themselves.
UNSENT_INDEXES_SQL = """
CREATE INDEX IF NOT EXISTS idx_attempts_unsent ON attempts (
    trace_id, delivery_id, attempt, started_at_ms, status, final, max_attempts,
    writer_id, channel, error_type, failure_class, error_text
) WHERE status != 'delivered';
CREATE INDEX IF NOT EXISTS idx_enqueues_failed_trace
    ON enqueues (trace_id, status, delivery_id, error_type, error_text)
    WHERE status = 'failed';
CREATE INDEX IF NOT EXISTS idx_runs_pending_cover
    ON ai_runs (started_at_ms, id, ended_at_ms, trace_id, inbound_id, channel, reply_pending)
    WHERE reply_pending = 1;
DROP INDEX IF EXISTS idx_runs_pending;
"""

SPLIT_DELIVERY_TRIGGERS = ("attempts_split_ai", "attempts_split_au", "attempts_split_ad")


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

# One pass over the attempts in table order, grouped in a temporary b-tree.
SPLIT_DELIVERIES_BACKFILL_SQL = """
DELETE FROM split_deliveries;
INSERT INTO split_deliveries
SELECT delivery_id FROM attempts NOT INDEXED
GROUP BY delivery_id HAVING MIN(trace_id) IS NOT MAX(trace_id);
"""

# -- undelivered's kept verdicts (schema m009) ----------------------------------------

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
DROP INDEX IF EXISTS idx_runs_pending_cover;
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

# Every trace with a pending run waits to be judged; the upgrade then judges them all.
TRACE_VERDICTS_BACKFILL_SQL = f"""
UPDATE ai_runs SET {", ".join(f"{c} = NULL" for c in VERDICT_COLUMNS)}
WHERE verdict_attempts IS NOT NULL;
DELETE FROM traces_to_judge;
INSERT INTO traces_to_judge SELECT DISTINCT trace_id FROM ai_runs WHERE reply_pending = 1;
"""
