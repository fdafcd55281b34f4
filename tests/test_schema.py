"""The store file: private, WAL, incremental vacuum, versioned, and plain-SQL friendly."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from local_store import (
    SCHEMA_VERSION,
    StoreUpgradeNeededError,
    StoreVersionError,
    StoreWriter,
    open_for_reading,
    open_store,
)
from local_store._migrations import KNOWN_MIGRATIONS, migrations
from tests import rawdb


def test_new_store_is_private_wal_and_incrementally_vacuumed(tmp_path: Path) -> None:
    writer = StoreWriter(tmp_path / "state" / "d.db")
    try:
        conn = rawdb.connect(tmp_path / "state" / "d.db")
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()
        assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
        files = sorted(p.name for p in (tmp_path / "state").iterdir())
        assert files == ["d.db", "d.db-shm", "d.db-wal"]
        for name in files:
            assert stat.S_IMODE((tmp_path / "state" / name).stat().st_mode) == 0o600, name
    finally:
        writer.close()


def test_schema_version_is_recorded_and_newer_stores_are_refused(tmp_path: Path) -> None:
    db = open_store(tmp_path / "d.db", create=True)
    applied = [m.name for m in migrations.applied(db)]
    assert applied == list(KNOWN_MIGRATIONS)
    assert len(applied) == SCHEMA_VERSION
    db.execute(
        "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
        "VALUES ('otel_delivery', 'm999_from_the_future', '2030-01-01')"
    )
    db.conn.commit()
    db.close()
    with pytest.raises(StoreVersionError, match="newer otel-delivery"):
        open_store(tmp_path / "d.db")
    # A writer does not crash the gateway on it: it counts and keeps rows for retry.
    writer = StoreWriter(tmp_path / "d.db")
    writer.submit("ai_runs", {"trace_id": "t", "span_id": "s", "status": "ok",
                              "started_at_ms": 1})
    assert writer.flush(timeout_seconds=0.3) is False
    assert writer.stats()["queued"] == 1
    writer.close(timeout_seconds=0.1)


def test_an_older_store_is_upgraded_in_place(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    open_store(tmp_path / "d.db", create=True).close()  # the baseline schema
    newer = request.getfixturevalue("next_migration")
    with pytest.raises(StoreUpgradeNeededError, match="otel-delivery upgrade"):
        open_for_reading(tmp_path / "d.db")
    db = open_store(tmp_path / "d.db", create=True)
    assert [m.name for m in migrations.applied(db)] == [*KNOWN_MIGRATIONS, newer]
    assert "idx_receipts_recorded" in {i.name for i in db["receipts"].indexes}
    db.close()
    open_for_reading(tmp_path / "d.db").close()


def _pre_baseline_store(path: Path) -> None:
    """A store as the builds before the baseline left it: their migration names."""
    db = open_store(path, create=True)
    db.execute("DELETE FROM _sqlite_migrations")
    for name in ("m001_initial", "m002_views", "m010_receipts"):
        db.execute(
            "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
            "VALUES ('otel_delivery', ?, '2026-11-01')", [name]
        )
    db.conn.commit()
    db.close()


def test_a_store_from_before_the_baseline_is_refused_in_one_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from otel_delivery.cli import main

    path = tmp_path / "old.db"
    _pre_baseline_store(path)
    for opener in (open_store, open_for_reading):
        with pytest.raises(StoreVersionError, match="earlier otel-delivery build"):
            opener(path)
    for command in (["summary"], ["failures"], ["health"], ["upgrade"]):
        result = CliRunner().invoke(main, [*command, "--store", str(path)])
        assert result.exit_code == 1, command
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
        assert str(path) in lines[0] and "move it aside" in lines[0], lines[0]
    # What the line says works: moved aside, a writer starts a new store there.
    path.rename(tmp_path / "old.db.old")
    writer = StoreWriter(path)
    writer.submit("ai_runs", {"trace_id": "t", "span_id": "s", "status": "ok",
                              "started_at_ms": 1})
    assert writer.flush()
    writer.close()
    db = open_for_reading(path)
    assert [m.name for m in migrations.applied(db)] == list(KNOWN_MIGRATIONS)
    assert db["ai_runs"].count == 1
    db.close()


def test_undelivered_view_probes_attempts_by_trace(tmp_path: Path) -> None:
    db = open_store(tmp_path / "d.db", create=True)
    rows = db.execute("EXPLAIN QUERY PLAN SELECT * FROM v_undelivered")
    plan = " ".join(str(row[3]) for row in rows)
    assert "idx_attempts_trace" in plan
    assert "idx_attempts_status" not in plan


def test_the_attempt_views_show_retry_after(tmp_path: Path) -> None:
    db = open_store(tmp_path / "d.db", create=True)
    db.execute(
        "INSERT INTO attempts (delivery_id, attempt, trace_id, span_id, status, "
        "started_at_ms, retry_after_seconds) VALUES ('d1', 1, 't1', 's1', 'failed', 0, 37.5)"
    )
    db.conn.commit()
    for view in ("v_attempts", "v_failures"):
        row = db.execute(f"SELECT delivery_id, retry_after_seconds, started_at FROM {view}")
        assert row.fetchall() == [("d1", 37.5, "1970-01-01T00:00:00.000Z")], view
    db.close()


def _answers(path: Path, now_ms: int) -> str:
    """Every operator query's answer on the store at ``path``, as one JSON text."""
    import dataclasses
    import json

    from local_store import failures, summary, trace_story, undelivered

    def plain(x: object) -> object:
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            return dataclasses.asdict(x)
        if isinstance(x, list):
            return [plain(i) for i in x]
        return x

    db = open_store(path, readonly=True)
    try:
        traces = [t for (t,) in db.execute(
            "SELECT DISTINCT trace_id FROM attempts UNION SELECT trace_id FROM ai_runs "
            "ORDER BY 1").fetchall()]
        found = {
            "summary": plain(summary(db, since_seconds=86400, by="channel", now_ms=now_ms)),
            "failures": plain(failures(db, since_seconds=86400, limit=500, now_ms=now_ms)),
            "undelivered": plain(undelivered(db, since_seconds=86400, now_ms=now_ms)),
            "traces": [trace_story(db, trace_id=t, now_ms=now_ms).to_dict() for t in traces],
            "views": {v: sorted(map(repr, db.execute(f"SELECT * FROM {v}").fetchall()))
                      for v in ("v_attempts", "v_deliveries", "v_undelivered",
                                "v_enqueue_failures", "v_receipts")},
        }
    finally:
        db.close()
    assert len(found["traces"]) > 20 and found["undelivered"]
    return json.dumps(found, sort_keys=True, default=str)


def test_a_baseline_store_keeps_ids_as_bytes_after_m002_and_every_answer(
    tmp_path: Path,
) -> None:
    """m002 on a store the baseline build wrote (hex text ids): afterwards its ids are
    bytes, its schema is a new store's, and every query answers as on a new store."""
    import sqlite_utils

    from local_store._ids import ID_COLUMNS
    from local_store._rows import TABLE_COLUMNS
    from local_store._schema import connect
    from tests.store_builder import PLANS, StoreBuilder

    new = tmp_path / "new.db"
    builder = StoreBuilder(new)
    for i, plan in enumerate(sorted(PLANS) * 4):
        builder.delivery(plan, channel=("telegram", "slack")[i % 2], minutes_ago=30 + i)
    for i in range(6):  # hex delivery ids, as otel-delivery makes them up
        m = builder.message(minutes_ago=90 + i)
        builder.attempt(m.trace_id, f"{i:016x}", status=("failed", "delivered")[i % 2],
                        minutes_ago=89 + i, error_type="TimedOut")
        builder.enqueue(m.trace_id, f"{i:016x}", minutes_ago=89.5 + i, failed=i == 0)
    builder.message(minutes_ago=5)  # a reply with no attempt
    builder.flush()
    builder.close()

    # The same rows in a store as the baseline build wrote it: m001 only, ids as text.
    old = tmp_path / "old.db"
    conn = connect(old)
    conn.execute("PRAGMA journal_mode = WAL")
    migrations.apply(sqlite_utils.Database(conn), stop_before="m002_packed_ids")
    conn.execute(f"ATTACH '{new}' AS new")
    for table in ("writers", "inbound_messages", "ai_runs", "enqueues", "attempts",
                  "receipts", "drops"):
        ids = ID_COLUMNS.get(table, ())
        cols = ["id", *TABLE_COLUMNS[table]] if table in TABLE_COLUMNS else [
            r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
        shown = [f"lower(hex({c}))" if c in ids else c for c in cols]
        # Hex ids only: the others are text already.
        shown = [f"CASE WHEN typeof({c}) = 'blob' THEN {s} ELSE {c} END" if c in ids else s
                 for c, s in zip(cols, shown, strict=True)]
        conn.execute(f"INSERT INTO main.{table} ({', '.join(cols)}) "
                     f"SELECT {', '.join(shown)} FROM new.{table} ORDER BY rowid")
    conn.commit()
    (n_text,) = conn.execute(
        "SELECT COUNT(*) FROM attempts WHERE typeof(trace_id) = 'text'").fetchone()
    assert n_text > 20
    conn.execute("DETACH new")
    conn.close()

    open_store(old).close()  # the upgrade, as a gateway's writer runs it
    raw = rawdb.connect(old)
    raw.row_factory = None
    for table, columns in ID_COLUMNS.items():
        for c in columns:
            (n,) = raw.execute(
                f"SELECT COUNT(*) FROM {table} WHERE typeof({c}) = 'text' "
                f"AND length({c}) IN (16, 32) AND {c} NOT GLOB '*[^0-9a-f]*'").fetchone()
            assert n == 0, (table, c)
    (n_blob,) = raw.execute(
        "SELECT COUNT(*) FROM attempts WHERE typeof(delivery_id) = 'blob'").fetchone()
    assert n_blob == 6
    raw.close()

    def schema(path: Path) -> set[tuple[str, str, str]]:
        c = rawdb.connect(path)
        try:
            return set(c.execute("SELECT type, name, sql FROM sqlite_schema WHERE sql IS NOT NULL"))
        finally:
            c.close()

    assert schema(old) == schema(new)
    assert _answers(old, builder.now_ms) == _answers(new, builder.now_ms)
