"""Derived data kept by triggers, so the operator's questions do not scan the store.

Two rollups answer ``summary`` and ``health``:

``attempt_rollup``
    Attempts counted by time bucket, channel, status and (for failed attempts) error
    type and failure class. Every attempt counts in the bucket of its ``started_at_ms``,
    except attempts still ``started``: what those mean depends on whether their writer
    is alive when the question is asked, so readers count them from the rows.

``delivery_rollup``
    Deliveries counted by bucket, grouping (``channel``, ``status``, ``error``, and the
    totals ``all`` and ``failed``), group key and final outcome (``_outcome.py``'s
    rule with its ``TIMELESS`` present: a failed latest attempt is ``pending_retry``,
    and readers tell the ``abandoned`` ones apart when asked). A delivery counts once
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

What ``undelivered`` reads is kept in ``_pending.py``.
"""

from __future__ import annotations

from ._outcome import TIMELESS, group_outcome, single_attempt_outcome

__all__ = [
    "BUCKETS",
    "HOUR_MS",
    "MINUTE_MS",
    "ROLLUP_BACKFILL_SQL",
    "ROLLUP_TABLES_SQL",
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
    ``l``) the way ``xs`` is restricted. The outcome is ``_outcome``'s rule with the
    ``TIMELESS`` present (a failed latest attempt is ``pending_retry``, never
    ``abandoned``), for a delivery with no ``started`` attempt; deliveries with one
    contribute nothing.
    """
    outcome = f"""CASE WHEN MAX(x.status = 'started') THEN NULL
        ELSE {group_outcome("x", TIMELESS, table=table, also=latest_filter)} END"""
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
    outcome = single_attempt_outcome(row, TIMELESS)
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
# The rollups rebuilt from the rows: what the triggers must keep them equal to (the
# tests compare the two). The rebuild reads the attempts once, in table order, into a
# temporary copy with a covering index by delivery: read through idx_attempts_delivery
# instead, a large store's rows would be fetched in random order (about 20 minutes at
# 10M attempts).
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
