"""``delivery_outcomes`` and ``trace_delivery_outcomes`` judge each delivery from one read
of its attempts (window functions over them); here they are checked against
``outcome_of`` (one index probe per test per delivery) on randomised stores: retries,
deliveries whose attempts are in several traces, dead writers' ``started`` rows, ties
in attempt number, and values of the wrong type written by hand. The traces with no
delivered attempt are also judged as ``undelivered`` judges them, from
``idx_attempts_unsent`` (``_pending.py``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils

from local_store import open_store
from local_store._outcome import (
    DEAD_CTE,
    effective_status,
    latest_attempt,
    liveness_params,
    outcome_of,
)
from local_store._reading import DeliveryOutcome, delivery_outcomes, trace_delivery_outcomes
from tests.test_rollups import NOW, _populate


def _reference(
    db: sqlite_utils.Database, targets_sql: str, params: dict[str, Any]
) -> list[tuple[Any, ...]]:
    """Each delivery judged with ``outcome_of``'s index probes."""
    return db.execute(
        f"""WITH {DEAD_CTE}, targets(delivery_id) AS ({targets_sql}),
        judged AS (
            SELECT t.delivery_id, {outcome_of("t.delivery_id")} AS outcome,
                   {latest_attempt("t.delivery_id", "l.id")} AS latest_id,
                   (SELECT COUNT(*) FROM attempts x WHERE x.delivery_id = t.delivery_id)
                       AS attempts,
                   (SELECT MIN(x.attempt) FROM attempts x WHERE x.delivery_id = t.delivery_id
                    AND +x.status = 'delivered') AS delivered_attempt
            FROM targets t
        )
        SELECT j.delivery_id, j.outcome, j.attempts, l.attempt AS last_attempt,
               {effective_status("l")} AS last_status, j.delivered_attempt, l.channel,
               l.trace_id, l.error_type, l.error_text, l.failure_class
        FROM judged j JOIN attempts l ON l.id = j.latest_id
        ORDER BY l.started_at_ms, j.delivery_id""",
        params,
    ).fetchall()


def _tuples(outcomes: list[DeliveryOutcome]) -> list[tuple[Any, ...]]:
    return [tuple(vars(d).values()) for d in outcomes]


def _check(db: sqlite_utils.Database, rng: random.Random) -> None:
    traces = [t for (t,) in db.execute("SELECT DISTINCT trace_id FROM attempts").fetchall()]
    for k in (1, 3, len(traces) // 4, len(traces)):
        chosen = sorted(rng.sample(traces, min(k, len(traces))))
        params = {"traces": json.dumps(chosen), **liveness_params(db, NOW)}
        targets = (
            "SELECT DISTINCT delivery_id FROM attempts "
            "WHERE trace_id IN (SELECT packed_id(value) FROM json_each(:traces))"
        )
        expected = _reference(db, targets, params)
        assert _tuples(delivery_outcomes(db, targets, params)) == expected
        assert _tuples(trace_delivery_outcomes(db, params)) == expected
    # The traces with no delivered attempt (reply_pending runs' traces), as undelivered
    # reads them: from idx_attempts_unsent, in index order.
    unsent = sorted(t for (t,) in db.execute(
        "SELECT DISTINCT trace_id FROM attempts a WHERE NOT EXISTS (SELECT 1 FROM attempts "
        "d WHERE d.trace_id = a.trace_id AND d.status = 'delivered')"
    ).fetchall())
    assert unsent
    params = {"traces": json.dumps(unsent), **liveness_params(db, NOW)}
    expected = _reference(db, targets, params)
    assert _tuples(trace_delivery_outcomes(db, params, undelivered_traces=True)) == expected


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_one_read_per_delivery_judges_as_the_probes_did(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    db = open_store(tmp_path / "d.db", create=True)
    _populate(db, rng, deliveries=200)
    _check(db, rng)

    ids = [i for (i,) in db.execute("SELECT id FROM attempts").fetchall()]
    # Attempts moved to other deliveries: a delivery now has attempts in other traces.
    for i in rng.sample(ids, 25):
        db.execute("UPDATE attempts SET delivery_id = ? WHERE id = ?",
                   [f"d{rng.randrange(30)}", i])
    # Ties on attempt number (the start time decides), and on both (the id does).
    for i in rng.sample(ids, 25):
        db.execute("UPDATE attempts SET attempt = 2 WHERE id = ?", [i])
    for i in rng.sample(ids, 10):
        db.execute("UPDATE attempts SET attempt = 2, started_at_ms = ? WHERE id = ?", [NOW, i])
    db.conn.commit()
    _check(db, rng)

    # Written by hand with the wrong types: SQLite's order across types must hold.
    for i in rng.sample(ids, 6):
        db.execute("UPDATE attempts SET started_at_ms = 'soon', attempt = 'x' WHERE id = ?", [i])
    for i in rng.sample(ids, 4):
        db.execute("UPDATE attempts SET final = '1', max_attempts = 'two' WHERE id = ?", [i])
    db.conn.commit()
    _check(db, rng)
    db.close()


def test_no_traces_no_outcomes(tmp_path: Path) -> None:
    db = open_store(tmp_path / "d.db", create=True)
    _populate(db, random.Random(5), deliveries=20)
    params = {"traces": "[]", **liveness_params(db, NOW)}
    assert trace_delivery_outcomes(db, params) == []


def test_a_tie_on_attempt_and_start_goes_to_the_later_row(tmp_path: Path) -> None:
    """In idx_attempts_unsent's order the status comes before the id: the latest of
    rows tied on attempt and start must still be the one written last."""
    db = open_store(tmp_path / "d.db", create=True)
    for span, (status, error_type) in enumerate(
        [("failed", "First"), ("interrupted", None), ("failed", "Third")]
    ):
        db.execute(
            "INSERT INTO attempts (delivery_id, attempt, trace_id, span_id, status, "
            "error_type, started_at_ms) VALUES ('d1', 2, 't1', ?, ?, ?, ?)",
            [f"s{span}", status, error_type, NOW - 1000],
        )
    db.conn.commit()
    params = {"traces": json.dumps(["t1"]), **liveness_params(db, NOW)}
    expected = _reference(db, "SELECT 'd1'", params)
    assert [(d[1], d[2], d[8]) for d in expected] == [("pending_retry", 3, "Third")]
    assert _tuples(trace_delivery_outcomes(db, params, undelivered_traces=True)) == expected
    assert _tuples(trace_delivery_outcomes(db, params)) == expected
    db.close()
