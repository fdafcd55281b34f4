"""The store's schema, versioned with sqlite-utils ``Migrations`` (the
``_sqlite_migrations`` table): each migration, and the SQL it runs.

A store that records a migration this code does not know was written by a newer
otel-delivery, and is refused (``_schema.schema_version``).
"""

from __future__ import annotations

import sqlite3

import sqlite_utils
from sqlite_utils.migrations import Migrations

from . import _pending, _rollups
from ._receipts import RECEIPTS_SQL
from ._verdicts import refresh_verdicts

__all__ = ["KNOWN_MIGRATIONS", "MIGRATION_SET", "SCHEMA_VERSION", "migrations"]

MIGRATION_SET = "otel_delivery"
migrations = Migrations(MIGRATION_SET)


@migrations()
def m001_initial(db: sqlite_utils.Database) -> None:
    db.executescript(_INITIAL_SQL)


@migrations()
def m002_views(db: sqlite_utils.Database) -> None:
    db.executescript(_VIEWS_SQL)


@migrations()
def m003_undelivered_by_trace(db: sqlite_utils.Database) -> None:
    # Without index statistics SQLite answered v_undelivered through the status index,
    # re-reading every delivered attempt once per AI run; '+a.status' leaves it the
    # trace index, one probe per run.
    db.executescript(_UNDELIVERED_VIEW_V3)


@migrations()
def m004_retry_after(db: sqlite_utils.Database) -> None:
    # The wait a rate-limited service asked for (Telegram retry_after, Slack
    # Retry-After), so operators can see floods without reading error texts.
    if "retry_after_seconds" not in db["attempts"].columns_dict:
        db.execute("ALTER TABLE attempts ADD COLUMN retry_after_seconds REAL")


@migrations()
def m005_summary_rollups(db: sqlite_utils.Database) -> None:
    # summary and health read hourly and per-minute counts kept by triggers on
    # attempts (see _rollups.py) instead of scanning the window; backfilled here.
    script = [_rollups.ROLLUP_TABLES_SQL]
    script += [f"DROP TRIGGER IF EXISTS {name};" for name in _rollups.ROLLUP_TRIGGERS]
    script += [_rollups.ROLLUP_TRIGGERS_SQL, _rollups.ROLLUP_BACKFILL_SQL]
    _run_script(db, "\n".join(script))


@migrations()
def m006_reply_pending(db: sqlite_utils.Database) -> None:
    # undelivered reads only the runs whose reply no attempt has delivered yet.
    if "reply_pending" not in db["ai_runs"].columns_dict:
        db.execute("ALTER TABLE ai_runs ADD COLUMN reply_pending INTEGER NOT NULL DEFAULT 0")
    script = [f"DROP TRIGGER IF EXISTS {name};" for name in _pending.REPLY_PENDING_TRIGGERS]
    script += [_pending.REPLY_PENDING_SQL, _pending.REPLY_PENDING_BACKFILL_SQL]
    _run_script(db, "\n".join(script))


@migrations()
def m007_undelivered_indexes(db: sqlite_utils.Database) -> None:
    # undelivered reads its runs, attempts and failed enqueues from small covering
    # indexes, and split_deliveries tells it which deliveries span traces.
    script = [f"DROP TRIGGER IF EXISTS {name};" for name in _pending.SPLIT_DELIVERY_TRIGGERS]
    script += [
        _pending.UNSENT_INDEXES_SQL, _pending.SPLIT_DELIVERIES_SQL,
        _pending.SPLIT_DELIVERIES_BACKFILL_SQL,
    ]
    _run_script(db, "\n".join(script))


@migrations()
def m008_views_retry_after(db: sqlite_utils.Database) -> None:
    # v_attempts (and v_failures, built on it) show m004's retry_after_seconds too.
    _run_script(db, _ATTEMPTS_VIEWS_V8)


# Traces judged per statement by m009's backfill.
_JUDGE_SLICE = 5_000


@migrations()
def m009_undelivered_verdicts(db: sqlite_utils.Database) -> None:
    # undelivered reads each pending reply's verdict, judged ahead and kept by the
    # writers (see _verdicts.py), instead of judging every trace when asked.
    have = db["ai_runs"].columns_dict
    for column in _pending.VERDICT_COLUMNS:
        if column not in have:
            db.execute(f"ALTER TABLE ai_runs ADD COLUMN {column}")
    script = [f"DROP TRIGGER IF EXISTS {name};" for name in _pending.VERDICT_TRIGGERS]
    script += [_pending.TRACE_VERDICTS_SQL, _pending.TRACE_VERDICTS_BACKFILL_SQL]
    _run_script(db, "\n".join(script))
    # In slices, so that a large store's upgrade holds a few thousand traces' rows in
    # memory at a time, not every pending trace's (182k at 10M attempts).
    while refresh_verdicts(db, limit=_JUDGE_SLICE):
        pass


@migrations()
def m010_receipts(db: sqlite_utils.Database) -> None:
    # What the platform said after accepting a message (see _receipts.py).
    _run_script(db, RECEIPTS_SQL)


def _run_script(db: sqlite_utils.Database, script: str) -> None:
    """Run ``script`` statement by statement inside the migration's transaction
    (``executescript`` would commit first, so a stopped backfill would leave half a
    rollup behind)."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            if statement.strip():
                db.execute(statement)
            statement = ""
    if statement.strip():
        db.execute(statement)


KNOWN_MIGRATIONS = (
    "m001_initial", "m002_views", "m003_undelivered_by_trace", "m004_retry_after",
    "m005_summary_rollups", "m006_reply_pending", "m007_undelivered_indexes",
    "m008_views_retry_after", "m009_undelivered_verdicts", "m010_receipts",
)
SCHEMA_VERSION = len(KNOWN_MIGRATIONS)

_INITIAL_SQL = """
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
    service TEXT
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
    writer_id INTEGER
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

_VIEWS_SQL = """
CREATE VIEW v_attempts AS
SELECT
    id, delivery_id, attempt, max_attempts, channel, recipient, status,
    error_type, error_text, failure_class, final,
    strftime('%Y-%m-%dT%H:%M:%fZ', started_at_ms / 1000.0, 'unixepoch') AS started_at,
    strftime('%Y-%m-%dT%H:%M:%fZ', ended_at_ms / 1000.0, 'unixepoch') AS ended_at,
    duration_ms, provider_message_id, trace_id, span_id, inbound_id, service
FROM attempts;

CREATE VIEW v_failures AS
SELECT * FROM v_attempts WHERE status = 'failed' ORDER BY id DESC;

CREATE VIEW v_deliveries AS
SELECT
    delivery_id,
    COUNT(*) AS attempts,
    MAX(channel) AS channel,
    MAX(trace_id) AS trace_id,
    CASE
        WHEN SUM(status = 'delivered') > 0 THEN 'delivered'
        WHEN SUM(status = 'failed' AND final = 1) > 0 THEN 'failed'
        WHEN SUM(status IN ('started', 'interrupted')) > 0 THEN 'in_flight_or_interrupted'
        ELSE 'will_retry'
    END AS outcome,
    strftime('%Y-%m-%dT%H:%M:%fZ', MIN(started_at_ms) / 1000.0, 'unixepoch') AS first_at,
    strftime('%Y-%m-%dT%H:%M:%fZ', MAX(started_at_ms) / 1000.0, 'unixepoch') AS last_at
FROM attempts
GROUP BY delivery_id;

CREATE VIEW v_undelivered AS
SELECT
    r.trace_id, r.inbound_id, r.channel, r.agent,
    strftime('%Y-%m-%dT%H:%M:%fZ', r.ended_at_ms / 1000.0, 'unixepoch') AS reply_at,
    (SELECT COUNT(*) FROM attempts a WHERE a.trace_id = r.trace_id) AS attempts
FROM ai_runs r
WHERE r.reply_produced = 1
  AND NOT EXISTS (
      SELECT 1 FROM attempts a WHERE a.trace_id = r.trace_id AND a.status = 'delivered'
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

_UNDELIVERED_VIEW_V3 = """
DROP VIEW v_undelivered;
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
"""

_ATTEMPTS_VIEWS_V8 = """
DROP VIEW IF EXISTS v_failures;
DROP VIEW IF EXISTS v_attempts;
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
"""

# How long a connection waits for another writer before giving up. The
# gateway's hot path uses a much shorter bound (see writer.py).
