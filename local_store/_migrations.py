"""The store's schema, versioned with sqlite-utils ``Migrations`` (the
``_sqlite_migrations`` table): each migration, and the SQL it runs.

``m001_baseline`` creates the whole schema of a new store: the tables, their
indexes, the views (``v_deliveries`` judges with the delivery outcome rule of
``_outcome.py``), and the triggers that keep the rollups (``_rollups.py``),
``reply_pending`` and the kept verdicts (``_pending.py``) and the receipts
(``_receipts.py``). A later schema change is a new migration, appended below.

A store that records a migration this code does not know is refused
(``_schema.schema_version``): one written by a newer otel-delivery, or one written
by a build from before the baseline (its first migration is ``m001_initial``),
which has no upgrade path.
"""

from __future__ import annotations

import sqlite3

import sqlite_utils
from sqlite_utils.migrations import Migrations

from . import _pending, _rollups
from ._ids import ID_COLUMNS, hex_sql
from ._ids import register as register_ids
from ._outcome import DELIVERIES_VIEW_SQL
from ._receipts import RECEIPTS_SQL, RECEIPTS_VIEW_SQL

__all__ = [
    "KNOWN_MIGRATIONS", "MIGRATION_SET", "PRE_BASELINE_MIGRATIONS", "SCHEMA_VERSION",
    "migrations",
]

MIGRATION_SET = "otel_delivery"
migrations = Migrations(MIGRATION_SET)


@migrations()
def m001_baseline(db: sqlite_utils.Database) -> None:
    _run_script(db, "\n".join((
        _TABLES_SQL,
        _VIEWS_SQL,
        DELIVERIES_VIEW_SQL,
        _rollups.ROLLUP_TABLES_SQL,
        _rollups.ROLLUP_TRIGGERS_SQL,
        _pending.REPLY_PENDING_SQL,
        _pending.UNSENT_INDEXES_SQL,
        _pending.SPLIT_DELIVERIES_SQL,
        _pending.TRACE_VERDICTS_SQL,
        RECEIPTS_SQL,
    )))


def _run_script(db: sqlite_utils.Database, script: str) -> None:
    """Run ``script`` statement by statement inside the migration's transaction
    (``executescript`` would commit first, so a stopped migration would leave half a
    schema behind)."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            if statement.strip():
                db.execute(statement)
            statement = ""
    if statement.strip():
        db.execute(statement)


@migrations()
def m002_packed_ids(db: sqlite_utils.Database) -> None:
    """Ids as ``_ids.py`` keeps them: each 16- or 32-digit lowercase hex id becomes its
    bytes, and the views show ids as hex; enqueues keep a time index of their
    failures only. The triggers are set aside while the ids change (an id
    changes form, not value, so nothing they keep changes) and put back as they were.
    The space the shorter ids free is given back by ``prune --compact``."""
    register_ids(db.conn)  # packed_id(), should the connection not be one of ours
    _recreate_views(db)
    # Enqueues are read by status only for failures: an index of the failed ones.
    db.execute("DROP INDEX idx_enqueues_status")
    db.execute(
        "CREATE INDEX idx_enqueues_failed ON enqueues (started_at_ms) WHERE status = 'failed'"
    )
    if not any(db.execute(f"SELECT 1 FROM {t} LIMIT 1").fetchone() for t in ID_COLUMNS):
        return  # a new store: no id to change
    triggers = db.execute(
        "SELECT name, sql FROM sqlite_schema WHERE type = 'trigger' ORDER BY rowid"
    ).fetchall()
    for name, _ in triggers:
        db.execute(f"DROP TRIGGER {name}")
    for table, columns in ID_COLUMNS.items():
        changed = " OR ".join(f"{c} IS NOT packed_id({c})" for c in columns)
        db.execute(
            f"UPDATE {table} SET {', '.join(f'{c} = packed_id({c})' for c in columns)} "
            f"WHERE {changed}"
        )
    for _, sql in triggers:
        db.execute(sql)


def _recreate_views(db: sqlite_utils.Database) -> None:
    """Drop every view and create the current ones (a view holds no data)."""
    for (name,) in db.execute("SELECT name FROM sqlite_schema WHERE type = 'view'").fetchall():
        db.execute(f"DROP VIEW {name}")
    _run_script(db, _VIEWS_SQL + DELIVERIES_VIEW_SQL + RECEIPTS_VIEW_SQL)


KNOWN_MIGRATIONS = ("m001_baseline", "m002_packed_ids")
SCHEMA_VERSION = len(KNOWN_MIGRATIONS)

#: The migrations of the builds before the baseline. A store that records them has
#: no upgrade path: it is refused with a line saying how to start a new one.
PRE_BASELINE_MIGRATIONS = frozenset({
    "m001_initial", "m002_views", "m003_undelivered_by_trace", "m004_retry_after",
    "m005_summary_rollups", "m006_reply_pending", "m007_undelivered_indexes",
    "m008_views_retry_after", "m009_undelivered_verdicts", "m010_receipts",
})

_TABLES_SQL = """
CREATE TABLE writers (
    id INTEGER PRIMARY KEY,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    service TEXT,
    started_at_ms INTEGER NOT NULL,
    ended_at_ms INTEGER
);

CREATE TABLE inbound_messages (
    id INTEGER PRIMARY KEY,
    trace_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    inbound_id TEXT,
    channel TEXT,
    sender TEXT,
    conversation TEXT,
    status TEXT NOT NULL,
    error_type TEXT,
    error_text TEXT,
    received_at_ms INTEGER NOT NULL,
    ended_at_ms INTEGER,
    service TEXT
);
CREATE INDEX idx_inbound_inbound_id ON inbound_messages (inbound_id);
CREATE INDEX idx_inbound_trace ON inbound_messages (trace_id);
CREATE INDEX idx_inbound_received ON inbound_messages (received_at_ms);

CREATE TABLE ai_runs (
    id INTEGER PRIMARY KEY,
    trace_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    parent_span_id TEXT,
    inbound_id TEXT,
    channel TEXT,
    agent TEXT,
    model TEXT,
    conversation TEXT,
    status TEXT NOT NULL,
    error_type TEXT,
    error_text TEXT,
    reply_produced INTEGER,
    started_at_ms INTEGER NOT NULL,
    ended_at_ms INTEGER,
    duration_ms REAL,
    service TEXT,
    reply_pending INTEGER NOT NULL DEFAULT 0,
    -- undelivered's kept verdict of a pending run (_verdicts.py); no declared type:
    -- values are kept exactly as written
    verdict_reason,
    verdict_delivery_id,
    verdict_attempts,
    verdict_error_type,
    verdict_error_text
);
CREATE INDEX idx_runs_trace ON ai_runs (trace_id);
CREATE INDEX idx_runs_started ON ai_runs (started_at_ms);

CREATE TABLE attempts (
    id INTEGER PRIMARY KEY,
    delivery_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    max_attempts INTEGER,
    trace_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    parent_span_id TEXT,
    inbound_id TEXT,
    channel TEXT,
    recipient TEXT,
    status TEXT NOT NULL,
    error_type TEXT,
    error_text TEXT,
    failure_class TEXT,
    final INTEGER,
    started_at_ms INTEGER NOT NULL,
    ended_at_ms INTEGER,
    duration_ms REAL,
    provider_message_id TEXT,
    service TEXT,
    writer_id INTEGER,
    retry_after_seconds REAL
);
CREATE UNIQUE INDEX idx_attempts_span ON attempts (span_id);
CREATE INDEX idx_attempts_delivery ON attempts (delivery_id, attempt);
CREATE INDEX idx_attempts_trace ON attempts (trace_id);
CREATE INDEX idx_attempts_started ON attempts (started_at_ms);
CREATE INDEX idx_attempts_status ON attempts (status, started_at_ms);

CREATE TABLE enqueues (
    id INTEGER PRIMARY KEY,
    trace_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    parent_span_id TEXT,
    delivery_id TEXT,
    inbound_id TEXT,
    channel TEXT,
    recipient TEXT,
    status TEXT NOT NULL,
    error_type TEXT,
    error_text TEXT,
    started_at_ms INTEGER NOT NULL,
    ended_at_ms INTEGER,
    service TEXT
);
CREATE INDEX idx_enqueues_trace ON enqueues (trace_id);
CREATE INDEX idx_enqueues_status ON enqueues (status, started_at_ms);
CREATE INDEX idx_enqueues_started ON enqueues (started_at_ms);

CREATE TABLE drops (
    reason TEXT PRIMARY KEY,
    count INTEGER NOT NULL,
    first_at_ms INTEGER NOT NULL,
    last_at_ms INTEGER NOT NULL,
    last_error TEXT
);
"""

# The unary + in v_undelivered keeps SQLite, which has no index statistics, off the
# status index: the trace index is one probe per run. Ids show as hex (_ids.py).
_VIEWS_SQL = f"""
CREATE VIEW v_attempts AS
SELECT
    id, {hex_sql("delivery_id")} AS delivery_id, attempt, max_attempts, channel, recipient,
    status, error_type, error_text, failure_class, final, retry_after_seconds,
    strftime('%Y-%m-%dT%H:%M:%fZ', started_at_ms / 1000.0, 'unixepoch') AS started_at,
    strftime('%Y-%m-%dT%H:%M:%fZ', ended_at_ms / 1000.0, 'unixepoch') AS ended_at,
    duration_ms, provider_message_id, {hex_sql("trace_id")} AS trace_id,
    {hex_sql("span_id")} AS span_id, inbound_id, service
FROM attempts;
CREATE VIEW v_failures AS
SELECT * FROM v_attempts WHERE status = 'failed' ORDER BY id DESC;

CREATE VIEW v_undelivered AS
SELECT
    {hex_sql("r.trace_id")} AS trace_id, r.inbound_id, r.channel, r.agent,
    strftime('%Y-%m-%dT%H:%M:%fZ', r.ended_at_ms / 1000.0, 'unixepoch') AS reply_at,
    (SELECT COUNT(*) FROM attempts a WHERE a.trace_id = r.trace_id) AS attempts
FROM ai_runs r
WHERE r.reply_produced = 1
  AND NOT EXISTS (
      SELECT 1 FROM attempts a WHERE a.trace_id = r.trace_id AND +a.status = 'delivered'
  );

CREATE VIEW v_enqueue_failures AS
SELECT
    id, {hex_sql("delivery_id")} AS delivery_id, channel, recipient, error_type, error_text,
    strftime('%Y-%m-%dT%H:%M:%fZ', started_at_ms / 1000.0, 'unixepoch') AS at,
    {hex_sql("trace_id")} AS trace_id, inbound_id, service
FROM enqueues WHERE status = 'failed';

CREATE VIEW v_drops AS
SELECT
    reason, count,
    strftime('%Y-%m-%dT%H:%M:%fZ', first_at_ms / 1000.0, 'unixepoch') AS first_at,
    strftime('%Y-%m-%dT%H:%M:%fZ', last_at_ms / 1000.0, 'unixepoch') AS last_at,
    last_error
FROM drops;
"""
