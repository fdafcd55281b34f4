"""The ``otel-delivery`` CLI, through click's CliRunner and as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from otel_delivery.cli import main
from tests import rawdb
from tests.store_builder import DAY_MINUTES, StoreBuilder

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def builder(tmp_path: Path) -> Iterator[StoreBuilder]:
    b = StoreBuilder(tmp_path / "deliveries.db")
    yield b
    b.close()


@pytest.fixture
def store(builder: StoreBuilder) -> Path:
    """Two telegram deliveries (one after a retry, one blocked), one slack delivery,
    a reply never sent, one crash mid-send, and one delivery 40 days old."""
    b = builder
    m = b.message(inbound_id="tg-1001", minutes_ago=30)
    b.attempt(m.trace_id, "d-retry", status="failed", minutes_ago=29, error_type="TimedOut",
              failure_class="transient", final=0, inbound_id=m.inbound_id)
    b.attempt(m.trace_id, "d-retry", status="delivered", minutes_ago=28,
              inbound_id=m.inbound_id)
    m = b.message(inbound_id="tg-1002", minutes_ago=20)
    b.attempt(m.trace_id, "d-blocked", status="failed", minutes_ago=19, error_type="Forbidden",
              error_text="bot was blocked by the user", failure_class="permanent", final=1)
    b.delivery("delivered_first", channel="slack", minutes_ago=15)
    b.message(inbound_id="tg-silent", minutes_ago=10)
    b.delivery("interrupted", minutes_ago=5)
    b.delivery("delivered_first", minutes_ago=40 * DAY_MINUTES)
    b.flush()
    return b.path


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def run_json(*args: str | Path) -> Any:
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# -- each command, human and JSON -------------------------------------------------------


def test_summary(store: Path) -> None:
    result = run("summary", "--store", store, "--since", "7d")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    telegram = next(line for line in lines if line.startswith("telegram"))
    # attempts, delivered, failed, interrupted, in_flight
    assert telegram.split()[1:6] == ["4", "1", "2", "1", "0"]
    assert any(line.split()[:2] == ["all", "5"] for line in lines)

    data = run_json("summary", "--store", store, "--since", "7d", "--by", "error")
    assert {(g["key"]["error_type"], g["attempts"]) for g in data["groups"]} == {
        ("TimedOut", 1), ("Forbidden", 1), (None, 3),
    }
    month = run_json("summary", "--store", store, "--since", "30d")
    week = run_json("summary", "--store", store, "--since", "1w")
    assert week["total"]["attempts"] == 5
    assert month["total"]["attempts"] == 5  # the 40-day-old one is outside both
    assert run_json("summary", "--store", store, "--since", "60d")["total"]["attempts"] == 6


def test_failures(store: Path) -> None:
    result = run("failures", "--store", store, "--since", "1d")
    assert result.exit_code == 0, result.output
    header, first, second = result.output.splitlines()
    assert header.split()[:3] == ["started", "channel", "delivery"]
    assert "d-blocked" in first and "Forbidden" in first and "yes" in first
    assert "d-retry" in second and "TimedOut" in second

    data = run_json("failures", "--store", store, "--channel", "telegram", "--limit", "1")
    assert [(f["delivery_id"], f["error_text"]) for f in data] == [
        ("d-blocked", "bot was blocked by the user"),
    ]
    assert "no failed attempts" in run("failures", "--store", store, "--channel", "sms").output


@pytest.mark.parametrize(
    ("selector", "verdict"),
    [
        (("--inbound", "tg-1001"), "delivered on attempt 2"),
        (("--delivery", "d-blocked"),
         "failed permanently: Forbidden (bot was blocked by the user)"),
        (("--inbound", "tg-silent"), "reply produced but no delivery was ever attempted"),
    ],
)
def test_trace(store: Path, selector: tuple[str, str], verdict: str) -> None:
    result = run("trace", "--store", store, *selector)
    assert result.exit_code == 0, result.output
    assert result.output.rstrip().endswith(f"verdict: {verdict}")
    assert "inbound" in result.output and "ai_run" in result.output

    data = run_json("trace", "--store", store, *selector)
    assert data["verdict"] == verdict
    by_trace = run_json("trace", "--store", store, "--trace", data["trace_ids"][0])
    assert by_trace["verdict"] == verdict


def test_undelivered(store: Path) -> None:
    result = run("undelivered", "--store", store, "--since", "1d", "--grace", "60s")
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines() if " ai_run " in line]
    assert sorted(row[3] for row in rows) == ["failed", "interrupted", "no_attempt"]
    assert result.output.rstrip().splitlines()[-1].startswith("3 replies not delivered")

    data = run_json("undelivered", "--store", store, "--since", "1d")
    assert sorted(i["reason"] for i in data["items"]) == ["failed", "interrupted", "no_attempt"]
    assert data["replies"] == 3
    # A 15-minute grace hides the 10-minute-old silent reply and the 5-minute-old crash.
    later = run_json("undelivered", "--store", store, "--since", "1d", "--grace", "15m")
    assert [i["reason"] for i in later["items"]] == ["failed"]


def test_interrupted(store: Path) -> None:
    result = run("interrupted", "--store", store)
    assert result.exit_code == 0, result.output
    assert len(result.output.splitlines()) == 2 and "recorded" in result.output
    (row,) = run_json("interrupted", "--store", store, "--since", "1h")
    assert row["why"] == "recorded" and row["channel"] == "telegram"
    assert run_json("interrupted", "--store", store, "--since", "1m") == []
    assert "no interrupted attempts" in run("interrupted", "--store", store, "--since", "1m").output


def test_prune(store: Path) -> None:
    dry = run("prune", "--store", store, "--older-than", "30d", "--keep-failed-for", "90d",
              "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert dry.output.startswith("dry run, nothing deleted; would delete: attempts 1,")
    assert run_json("summary", "--store", store, "--since", "60d")["total"]["attempts"] == 6

    data = run_json("prune", "--store", store, "--older-than", "30d", "--keep-failed-for", "90d")
    assert data["deleted"]["attempts"] == 1 and not data["dry_run"]
    assert run_json("summary", "--store", store, "--since", "60d")["total"]["attempts"] == 5
    again = run("prune", "--store", store, "--older-than", "30d", "--keep-failed-for", "90d",
                "--max-attempts", "100")
    assert again.exit_code == 0 and again.output.startswith("deleted: attempts 0,")


def test_health_fails_with_one_reason_per_line(store: Path) -> None:
    result = run("health", "--store", store, "--since", "1h")
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        "failure rate 50.0% (2 of 4 attempts) on channel telegram exceeds 5.0%",
        "1 interrupted attempt in the last 1h (max 0)",
        "3 replies produced but not delivered in the last 1h (max 0)",
    ]
    data = json.loads(run("health", "--store", store, "--json").stdout)
    assert data["ok"] is False and len(data["reasons"]) == 3


def test_health_passes_within_limits(store: Path) -> None:
    result = run("health", "--store", store, "--since", "1h", "--max-failure-rate", "0.7",
                 "--max-interrupted", "1", "--max-undelivered", "3")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("healthy: 5 attempts, 2 failed (40.0%), 1 interrupted")
    assert run("health", "--store", store, "--since", "1m").exit_code == 0


def test_query(store: Path) -> None:
    result = run("query", "--store", store,
                 "SELECT channel, COUNT(*) AS n FROM attempts GROUP BY channel ORDER BY channel")
    assert result.exit_code == 0, result.output
    assert [line.split() for line in result.output.splitlines()] == [
        ["channel", "n"], ["slack", "1"], ["telegram", "5"], ["(2", "rows)"],
    ]
    data = run_json("query", "--store", store,
                    "SELECT delivery_id FROM attempts WHERE error_type = ?", "-p", "Forbidden")
    assert data == {"columns": ["delivery_id"], "rows": [["d-blocked"]]}


def test_query_shows_ids_as_hex_and_finds_one_with_packed_id(store: Path) -> None:
    shown = run_json("query", "--store", store,
                     "SELECT trace_id, typeof(trace_id) FROM attempts ORDER BY id LIMIT 1")
    ((trace_id, kind),) = shown["rows"]
    assert kind == "blob" and len(trace_id) == 32 and int(trace_id, 16) >= 0
    for sql in ("SELECT COUNT(*) FROM attempts WHERE trace_id = packed_id(?)",
                "SELECT COUNT(*) FROM v_attempts WHERE trace_id = ?"):
        found = run_json("query", "--store", store, sql, "-p", trace_id)
        assert found["rows"][0][0] >= 1, sql
    assert run_json("query", "--store", store, "SELECT COUNT(*) FROM attempts "
                    "WHERE trace_id = ?", "-p", trace_id)["rows"] == [[0]]  # bytes, not text


def test_store_comes_from_the_environment(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_DELIVERY_STORE", str(store))
    assert run_json("summary")["total"]["attempts"] == 5


# -- errors are one line, never a traceback ---------------------------------------------


def _garbage(tmp_path: Path) -> Path:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not a database, just bytes\n" * 200)
    return path


def _newer(store: Path) -> Path:
    conn = rawdb.connect(store)
    conn.execute(
        "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
        "VALUES ('otel_delivery', 'm099_next_year', '2099-01-01')"
    )
    conn.commit()
    conn.close()
    return store


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("summary", "--store", "{missing}"), "no store at"),
        (("failures", "--store", "{garbage}"), "is not a readable otel-delivery store"),
        (("summary", "--store", "{newer}"), "written by a newer otel-delivery"),
        (("query", "SELECT 1", "--store", "{newer}"), "written by a newer otel-delivery"),
        (("summary", "--store", "{store}", "--since", "soon"),
         "--since: invalid duration 'soon'"),
        (("summary", "--store", "{store}", "--since", "0"), "--since must be longer than 0"),
        (("undelivered", "--store", "{store}", "--grace", "-1m"), "--grace: invalid duration"),
        (("summary", "--store", "{store}", "--by", "recipient"), "cannot group by 'recipient'"),
        (("failures", "--store", "{store}", "--limit", "0"), "Error: --limit must be"),
        (("trace", "--store", "{store}", "--inbound", "nope"), "no inbound id 'nope'"),
        (("trace", "--store", "{store}"), "exactly one of --inbound, --trace or --delivery"),
        (("trace", "--store", "{store}", "--inbound", "a", "--trace", "b"),
         "(got --inbound and --trace)"),
        (("prune", "--store", "{store}", "--older-than", "30d", "--keep-failed-for", "7d"),
         "failures are kept longer"),
        (("health", "--store", "{store}", "--max-failure-rate", "5"),
         "Error: --max-failure-rate must be a fraction"),
        (("query", "--store", "{store}", "DELETE FROM attempts"), "DELETE attempts refused"),
        (("query", "--store", "{store}", "ATTACH ':memory:' AS x"), "ATTACH"),
        (("query", "--store", "{store}", "PRAGMA user_version = 7"), "PRAGMA user_version"),
        (("query", "--store", "{store}", "SELEC 1"), "SQLite: near \"SELEC\""),
        (("query", "--store", "{store}", "SELECT 1; SELECT 2"), "one SQL statement"),
    ],
)
def test_errors_are_one_line_and_a_non_zero_exit(
    store: Path, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    paths = {
        "store": store,
        "missing": tmp_path / "missing.db",
        "garbage": _garbage(tmp_path),
        "newer": "{newer}" in args and _newer(store),
    }
    result = CliRunner().invoke(main, [a.format(**paths) for a in args])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert result.output.count("\n") == 1 and result.output.startswith("Error: ")
    assert message in result.output


def test_prune_refuses_a_store_it_cannot_open_without_creating_one(tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here.db"
    result = run("prune", "--store", missing, "--older-than", "1d", "--keep-failed-for", "1d")
    assert result.exit_code == 1 and "no store at" in result.output
    assert not missing.exists()


# -- help -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(main.commands))
def test_every_command_has_help_with_an_example(name: str) -> None:
    command = main.commands[name]
    assert command.help and len(command.help.strip()) > 20
    result = run(name, "--help")
    assert result.exit_code == 0
    assert f"otel-delivery {name}" in result.output  # the example
    options = {o for p in command.params if isinstance(p, click.Option) for o in p.opts}
    # The demo writes a store and prints a report; every query command also has --json.
    assert ({"--store"} if name == "demo" else {"--store", "--json"}) <= options


def test_group_help_lists_the_commands() -> None:
    result = run("--help")
    assert result.exit_code == 0
    for name in ("summary", "failures", "trace", "undelivered", "interrupted", "prune",
                 "health", "query"):
        assert name in result.output


# -- a real process -------------------------------------------------------------------------


def _subprocess(*args: str | Path) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    return subprocess.run(
        [sys.executable, "-m", "otel_delivery", *map(str, args)],
        capture_output=True, text=True, env=env, cwd=REPO, check=False, timeout=60,
    )


def test_python_dash_m_runs_the_cli(store: Path) -> None:
    done = _subprocess("summary", "--store", store, "--json", "--since", "7d")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["total"]["attempts"] == 5

    failed = _subprocess("trace", "--store", store, "--delivery", "nope")
    assert failed.returncode == 1
    assert failed.stdout == ""
    assert failed.stderr.startswith("Error: no delivery id 'nope' in the store")
    assert failed.stderr.count("\n") == 1 and "Traceback" not in failed.stderr

    unhealthy = _subprocess("health", "--store", store)
    assert unhealthy.returncode == 1 and "interrupted" in unhealthy.stdout


@pytest.mark.parametrize(
    "args",
    [(), ("prune", "--older-than", "30d"), ("summary", "--no-such-flag"), ("nope",)],
)
def test_usage_errors_are_clicks_with_exit_status_2(store: Path, args: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, [*args])
    assert result.exit_code == 2, result.output
    assert "Usage:" in result.output
    assert "Traceback" not in result.output


def _digest(path: Path) -> str:
    """The store's bytes: the file and its WAL (readers in WAL mode keep their read marks
    in the -shm file; that is SQLite's, not the store's)."""
    import hashlib

    return hashlib.sha256(b"".join(
        p.read_bytes() for p in (path, path.with_name(path.name + "-wal")) if p.exists()
    )).hexdigest()


def test_readers_never_write_and_refuse_a_store_that_needs_the_writer(
    store: Path, request: pytest.FixtureRequest
) -> None:
    before = _digest(store)
    for command in (["summary"], ["failures"], ["interrupted"], ["health"],
                    ["undelivered"], ["trace", "--delivery", "d-retry"]):
        CliRunner().invoke(main, [*command, "--store", str(store)])
    assert _digest(store) == before
    # An older schema: readers refuse it, in one line, and say what to run.
    request.getfixturevalue("next_migration")
    older = _digest(store)
    result = CliRunner().invoke(main, ["summary", "--store", str(store)])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and "otel-delivery upgrade" in result.output
    assert _digest(store) == older
    upgraded = CliRunner().invoke(main, ["upgrade", "--store", str(store)])
    assert upgraded.exit_code == 0, upgraded.output
    assert CliRunner().invoke(main, ["summary", "--store", str(store)]).exit_code == 0
