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
from ._outcome import DELIVERIES_VIEW_SQL
from ._receipts import RECEIPTS_SQL

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


KNOWN_MIGRATIONS = ("m001_baseline",)
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
# status index: the trace index is one probe per run.
_VIEWS_SQL = """
CREATE VIEW v_attempts AS
SELECT
    id, delivery_id, attempt, max_attempts, channel, recipient, status,
    error_type, error_text, failure_class, final, retry_after_seconds,
    strftime('%Y-%m-%dT%H:%M:%fZ', started_at_ms / 1000.0, 'unixepoch') AS started_at,
    strftime('%Y-%m-%dT%H:%M:%fZ', ended_at_ms / 1000.0, 'unixepoch') AS ended_at,
    duration_ms, provider_message_id, trace_id, span_id, inbound_id, service
FROM attempts;
CREATE VIEW v_failures AS
SELECT * FROM v_attempts WHERE status = 'failed' ORDER BY id DESC;

CREATE VIEW v_undelivered AS
SELECT
    r.trace_id, r.inbound_id, r.channel, r.agent,
    strftime('%Y-%m-%dT%H:%M:%fZ', r.ended_at_ms / 1000.0, 'unixepoch') AS reply_at,
    (SELECT COUNT(*) FROM attempts a WHERE a.trace_id = r.trace_id) AS attempts
FROM ai_runs r
WHERE r.reply_produced = 1
  AND NOT EXISTS (
      SELECT 1 FROM attempts a WHERE a.trace_id = r.trace_id AND +a.status = 'delivered'
  );

CREATE VIEW v_enqueue_failures AS
SELECT
    id, delivery_id, channel, recipient, error_type, error_text,
    strftime('%Y-%m-%dT%H:%M:%fZ', started_at_ms / 1000.0, 'unixepoch') AS at,
    trace_id, inbound_id, service
FROM enqueues WHERE status = 'failed';

CREATE VIEW v_drops AS
SELECT
    reason, count,
    strftime('%Y-%m-%dT%H:%M:%fZ', first_at_ms / 1000.0, 'unixepoch') AS first_at,
    strftime('%Y-%m-%dT%H:%M:%fZ', last_at_ms / 1000.0, 'unixepoch') AS last_at,
    last_error
FROM drops;
"""
