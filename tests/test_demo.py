"""The demo gateway end to end: what it says it did is what the store holds.

Each check reads the store with plain SQL, independently of the query functions the
report uses, and compares it with what the gateway counted while it ran.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import local_store
from otel_delivery.demo import STORIES, DemoResult, run_demo
from otel_delivery.demo.command import demo
from tests import rawdb

from .conftest import _OTEL_ENV


@dataclass
class Run:
    result: DemoResult
    report: str
    spans: list[ReadableSpan]

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        conn = rawdb.connect(self.result.store)
        conn.row_factory = rawdb.Row
        try:
            return [dict(r) for r in conn.execute(sql, params)]
        finally:
            conn.close()

    def attempts_of(self, story: str) -> list[dict[str, Any]]:
        return self.rows(
            "SELECT * FROM attempts WHERE inbound_id = ? ORDER BY attempt, id",
            (self.result.stories[story],),
        )

    def trace_of(self, story: str) -> str:
        (row,) = self.rows(
            "SELECT trace_id FROM inbound_messages WHERE inbound_id = ?",
            (self.result.stories[story],),
        )
        return str(row["trace_id"])

    def send_spans(self, story: str) -> list[ReadableSpan]:
        inbound_id = self.result.stories[story]
        spans = [
            s for s in self.spans
            if (s.attributes or {}).get("otel_delivery.kind") == "deliver"
            and (s.attributes or {}).get("otel_delivery.inbound_id") == inbound_id
        ]
        return sorted(spans, key=lambda s: int(str((s.attributes or {})["otel_delivery.attempt"])))


def _run(store: Path | None, seed: int = 7, messages: int = 40) -> Run:
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    out = io.StringIO()
    result = run_demo(store=store, seed=seed, messages=messages, out=out,
                      tracer_provider=provider)
    return Run(result, out.getvalue(), list(exporter.get_finished_spans()))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    # Module-scoped, so the per-test environment fixture has not run yet.
    with pytest.MonkeyPatch.context() as mp:
        for name in _OTEL_ENV:
            mp.delenv(name, raising=False)
        yield _run(tmp_path_factory.mktemp("demo") / "deliveries.db")


def _attempt_counts(r: Run) -> dict[str, dict[str, int]]:
    # The crashed attempt is 'started' (its writer died) until a later writer's
    # start-up rescue marks it 'interrupted'; both mean the same to an operator.
    counts: dict[str, dict[str, int]] = {}
    for row in r.rows("SELECT channel, status, COUNT(*) AS n FROM attempts GROUP BY 1, 2"):
        status = "interrupted" if row["status"] == "started" else row["status"]
        per_channel = counts.setdefault(row["channel"], {})
        per_channel[status] = per_channel.get(status, 0) + row["n"]
    return counts


def _delivery_outcomes(r: Run) -> dict[str, int]:
    outcomes = r.rows(
        """SELECT CASE WHEN SUM(status = 'delivered') > 0 THEN 'delivered'
                       WHEN SUM(status = 'failed' AND final = 1) > 0 THEN 'failed'
                       ELSE 'unfinished' END AS outcome
           FROM attempts GROUP BY delivery_id"""
    )
    return dict(Counter(row["outcome"] for row in outcomes))


# -- counts ------------------------------------------------------------------------


def test_store_holds_exactly_what_the_gateway_counted(run: Run) -> None:
    c = run.result.counts
    assert c.inbound == c.ai_runs == run.result.messages
    (totals,) = run.rows(
        """SELECT (SELECT COUNT(*) FROM inbound_messages) AS inbound,
                  (SELECT COUNT(*) FROM ai_runs) AS ai_runs,
                  (SELECT SUM(reply_produced) FROM ai_runs) AS replies,
                  (SELECT COUNT(*) FROM enqueues WHERE status = 'ok') AS enqueued,
                  (SELECT COUNT(*) FROM enqueues WHERE status = 'failed') AS enqueue_failed"""
    )
    assert totals == {
        "inbound": c.inbound, "ai_runs": c.ai_runs, "replies": c.replies,
        "enqueued": c.enqueued, "enqueue_failed": c.enqueue_failed,
    }
    assert _attempt_counts(run) == c.attempts
    assert _delivery_outcomes(run) == c.deliveries
    assert sum(c.deliveries.values()) == c.enqueued  # every queued reply reached an end


def test_every_channel_and_every_kind_of_outcome_shows_up(run: Run) -> None:
    counts = run.result.counts
    assert set(counts.attempts) == {"telegram", "slack", "whatsapp", "discord"}
    assert counts.attempts_by_status().keys() == {"delivered", "failed", "interrupted"}
    assert counts.enqueue_failed == 1
    assert counts.reloaded_after_restart >= 3  # the crashed entry and two timeouts


# -- trace shape ---------------------------------------------------------------------


def test_every_inbound_message_has_its_ai_run_in_the_same_trace(run: Run) -> None:
    orphans = run.rows(
        """SELECT inbound_id FROM inbound_messages i
           WHERE NOT EXISTS (SELECT 1 FROM ai_runs r
                             WHERE r.trace_id = i.trace_id AND r.inbound_id = i.inbound_id)"""
    )
    assert orphans == []
    strays = run.rows(
        """SELECT delivery_id FROM attempts a
           WHERE NOT EXISTS (SELECT 1 FROM inbound_messages i
                             WHERE i.trace_id = a.trace_id AND i.inbound_id = a.inbound_id)"""
    )
    assert strays == []


def test_rate_limited_reply_fails_transient_then_is_delivered_in_one_trace(run: Run) -> None:
    rows = run.attempts_of("rate_limited")
    assert [(r["attempt"], r["status"], r["failure_class"], r["final"]) for r in rows] == [
        (1, "failed", "transient", 0),
        (2, "delivered", None, 1),
    ]
    assert {r["trace_id"] for r in rows} == {run.trace_of("rate_limited")}
    assert rows[0]["error_text"] in {
        "Too Many Requests: retry after 1", "ratelimited", "(#130429) Rate limit hit",
        "You are being rate limited.",
    }


@pytest.mark.parametrize("story", ["retried_after_restart", "timed_out"])
def test_retries_after_the_restart_join_and_link_to_their_earlier_attempts(
    run: Run, story: str
) -> None:
    rows = run.attempts_of(story)
    assert len(rows) >= 2
    assert {r["trace_id"] for r in rows} == {run.trace_of(story)}
    spans = run.send_spans(story)
    assert len(spans) == len(rows)
    for i, span in enumerate(spans):
        linked = [link.context.span_id for link in span.links]
        assert linked == [earlier.context.span_id for earlier in spans[:i]]
        assert span.context.trace_id == spans[0].context.trace_id


def test_timeouts_are_retried_up_to_max_attempts_then_given_up(run: Run) -> None:
    rows = run.attempts_of("timed_out")
    assert [(r["attempt"], r["status"], r["error_type"], r["final"]) for r in rows] == [
        (1, "failed", "TimeoutError", 0),
        (2, "failed", "TimeoutError", 0),
        (3, "failed", "TimeoutError", 1),
    ]
    assert {r["max_attempts"] for r in rows} == {3}


@pytest.mark.parametrize(
    ("story", "texts"),
    [
        ("blocked", {"Forbidden: bot was blocked by the user"}),
        ("too_long", {
            "Bad Request: message is too long", "msg_too_long",
            "(#100) Invalid parameter: text.body must be at most 4096 characters",
            "Invalid Form Body: content: Must be 2000 or fewer in length. (50035)",
        }),
    ],
)
def test_permanent_failures_are_final_and_never_retried(
    run: Run, story: str, texts: set[str]
) -> None:
    (row,) = run.attempts_of(story)
    assert (row["status"], row["failure_class"], row["final"]) == ("failed", "permanent", 1)
    assert row["error_text"] in texts


def test_swallowed_enqueue_failure_is_on_record_and_nothing_was_sent(run: Run) -> None:
    inbound_id = run.result.undelivered_inbound_id
    (enq,) = run.rows("SELECT * FROM enqueues WHERE inbound_id = ?", (inbound_id,))
    assert (enq["status"], enq["error_type"]) == ("failed", "TypeError")
    assert "not JSON serializable" in enq["error_text"]
    (ai,) = run.rows("SELECT * FROM ai_runs WHERE inbound_id = ?", (inbound_id,))
    assert (ai["reply_produced"], ai["trace_id"]) == (1, enq["trace_id"])
    # The trace is in the store (the same id finds its enqueue), with no attempt.
    assert run.rows("SELECT 1 FROM enqueues WHERE trace_id = packed_id(?)", (enq["trace_id"],))
    assert run.rows(
        "SELECT * FROM attempts WHERE trace_id = packed_id(?)", (enq["trace_id"],)) == []


def test_crash_leaves_one_interrupted_attempt_and_the_restart_delivers_it(run: Run) -> None:
    cut = run.rows("SELECT * FROM attempts WHERE status IN ('started', 'interrupted')")
    assert len(cut) == 1
    (row,) = cut
    assert row["inbound_id"] == run.result.interrupted_inbound_id
    assert row["attempt"] == 1 and row["ended_at_ms"] is None
    (writer,) = run.rows("SELECT pid FROM writers WHERE id = ?", (row["writer_id"],))
    assert writer["pid"] != os.getpid()
    with pytest.raises(ProcessLookupError):  # killed and reaped: no process left to finish it
        os.kill(writer["pid"], 0)
    retry = [r for r in run.attempts_of("interrupted") if r["id"] != row["id"]]
    assert [(r["attempt"], r["status"], r["trace_id"]) for r in retry] == [
        (2, "delivered", row["trace_id"]),
    ]


def test_the_store_tells_each_story_the_way_the_report_says(run: Run) -> None:
    db = local_store.open_store(run.result.store, readonly=True)
    try:
        story = local_store.trace_story(db, inbound_id=run.result.interrupted_inbound_id)
    finally:
        db.close()
    assert [e["kind"] for e in story.timeline] == [
        "inbound", "ai_run", "enqueue", "attempt", "attempt",
    ]
    assert [e["status"] for e in story.timeline][-2:] == ["interrupted", "delivered"]


# -- determinism ---------------------------------------------------------------------


def test_same_seed_gives_the_same_counts_and_another_seed_does_not(tmp_path: Path) -> None:
    first = _run(tmp_path / "a.db", seed=11, messages=24)
    again = _run(tmp_path / "b.db", seed=11, messages=24)
    other = _run(tmp_path / "c.db", seed=12, messages=24)
    assert first.result.counts == again.result.counts
    assert _attempt_counts(first) == _attempt_counts(again)
    assert _delivery_outcomes(first) == _delivery_outcomes(again)
    assert _attempt_counts(other) != _attempt_counts(first)
    # Ids carry a per-run tag, so two runs into one store never mix up their stories.
    assert first.result.stories != again.result.stories


# -- the report and the command -----------------------------------------------------


def test_report_points_at_real_ids_with_the_store_it_was_given(run: Run) -> None:
    store = run.result.store
    for name in STORIES:
        if name == "no_reply":
            continue
        inbound_id = run.result.stories[name]
        assert f"otel-delivery trace --inbound {inbound_id} --store {store}" in run.report
        assert run.rows("SELECT 1 FROM inbound_messages WHERE inbound_id = ?", (inbound_id,))
    assert "Forbidden: bot was blocked by the user" in run.report
    assert "Interrupted attempts (1)" in run.report


def test_default_store_is_the_xdg_one_and_the_commands_need_no_store_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    r = _run(store=None, messages=12)
    assert r.result.store == tmp_path / "state" / "otel-delivery" / "deliveries.db"
    assert r.result.store.exists()
    assert f"otel-delivery trace --inbound {r.result.rate_limited_inbound_id}\n" in r.report
    assert "--store" not in r.report


def test_too_few_messages_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="messages must be between 10 and"):
        run_demo(store=tmp_path / "d.db", messages=3, out=io.StringIO())
    assert not (tmp_path / "d.db").exists()


def test_command_has_help_with_an_example_and_refuses_bad_arguments() -> None:
    runner = CliRunner()
    help_result = runner.invoke(demo, ["--help"])
    assert help_result.exit_code == 0
    assert "Example:" in help_result.output and "otel-delivery demo --seed 7" in help_result.output
    bad = runner.invoke(demo, ["--messages", "3"])
    assert bad.exit_code == 2
    assert "Traceback" not in bad.output


def test_command_runs_the_demo_end_to_end(tmp_path: Path) -> None:
    # A subprocess: the command sets up the global tracer provider, which must not
    # leak into the other tests.
    store = tmp_path / "cli.db"
    proc = subprocess.run(
        [sys.executable, "-m", "otel_delivery.demo.command",
         "--store", str(store), "--seed", "3", "--messages", "12"],
        capture_output=True, text=True, timeout=120,
        env={k: v for k, v in os.environ.items() if k not in _OTEL_ENV},
    )
    assert proc.returncode == 0, proc.stderr
    assert f"store: {store}" in proc.stdout
    assert "Dig further" in proc.stdout
    conn = rawdb.connect(store)
    try:
        (n,) = conn.execute("SELECT COUNT(*) FROM inbound_messages").fetchone()
    finally:
        conn.close()
    assert n == 12
