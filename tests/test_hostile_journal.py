"""Issue 15: a bad journal line, or a bad value in a row, loses only itself.

A leftover journal is read back by every writable open of the store (a restarted
gateway, every CLI command), so one bad line must never make the store unwritable.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from local_store import StoreWriter, open_store
from local_store._journal import HEADER, journal_files
from local_store._replay import quarantine_path, replay_orphans
from local_store._values import INT64_MAX, clean_row
from otel_delivery.cli import main
from tests import rawdb


def attempt(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "delivery_id": f"d-{n}", "trace_id": f"{n:032x}", "span_id": f"{n:016x}",
        "channel": "telegram", "status": "started", "started_at_ms": 1_000 + n, **extra,
    }


def drops(store: Path) -> dict[str, int]:
    with rawdb.connect(store) as conn:
        return dict(conn.execute("SELECT reason, count FROM drops"))


def delivery_ids(store: Path) -> set[str]:
    with rawdb.connect(store) as conn:
        return {r[0] for r in conn.execute("SELECT delivery_id FROM attempts")}


def write_journal(store: Path, lines: list[bytes], token: str = "0badf00d") -> Path:
    path = Path(f"{store}-journal-424242-{token}")
    path.write_bytes(HEADER + b"".join(line + b"\n" for line in lines))
    return path


# Lines that can never be written, each for a different reason.
BAD_LINES = [
    b"\x00\xff garbage \x1b[2J",
    b"[" * 100_000 + b"]" * 100_000,  # nested past any recursion limit
    b'["attempts:end", ' + b"[" * 5_000 + b"]" * 5_000 + b"]",
    b'["attempts:end"]',
    b'["attempts:explode", {}]',
    b'["attempts:end", "not an object"]',
    json.dumps(["attempts:end", {"delivery_id": {"an": "object"}, "trace_id": "t",
                                 "span_id": "s", "status": "failed",
                                 "started_at_ms": 1}]).encode(),  # no usable delivery id
    json.dumps(["attempts:end", {"delivery_id": "d", "trace_id": "t", "span_id": "s2",
                                 "status": "failed", "started_at_ms": "soon"}]).encode(),
    b"x" * 300_000,  # over the line bound
]


def test_bad_lines_are_set_aside_and_the_good_ones_replayed(tmp_path: Path) -> None:
    store = tmp_path / "d.db"
    open_store(store, create=True).close()
    good = [json.dumps(["attempts:start", attempt(n)]).encode() for n in range(1, 4)]
    # A list where a string belongs, a number SQLite cannot hold: the value is lost,
    # not the row.
    good.append(json.dumps(["attempts:end", attempt(
        4, status="failed", error_text=["a", "list"], recipient={"a": 1},
        attempt=99999999999999999999, max_attempts="²")]).encode())
    lines = [good[0], *BAD_LINES[:5], good[1], *BAD_LINES[5:], good[2], good[3]]
    journal = write_journal(store, lines)

    db = open_store(store)  # what every CLI command and a restarted gateway do
    db.close()
    assert not journal.exists()
    assert delivery_ids(store) == {"d-1", "d-2", "d-3", "d-4"}
    with rawdb.connect(store) as conn:
        row = conn.execute("SELECT attempt, max_attempts, error_text, recipient "
                           "FROM attempts WHERE delivery_id = 'd-4'").fetchone()
    assert row == (1, None, '["a", "list"]', None)
    counted = drops(store)
    assert counted["bad_journal_line"] == len(BAD_LINES)
    assert counted["bad_value"] == 3  # recipient, attempt, max_attempts
    kept = [json.loads(x) for x in quarantine_path(store).read_text().splitlines()]
    assert len(kept) == len(BAD_LINES)
    assert all(k["journal"] == journal.name and k["why"] for k in kept)
    assert os.stat(quarantine_path(store)).st_mode & 0o777 == 0o600


_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
    st.sampled_from(["--1", "²", "9" * 5000, "1e3", " 7 ", "-0"]),
)
_value = st.recursive(_scalar, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)
_COLUMNS = ["attempt", "max_attempts", "recipient", "error_text", "final", "ended_at_ms",
            "duration_ms", "retry_after_seconds", "channel", "writer_id", "inbound_id"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(st.dictionaries(st.sampled_from(_COLUMNS), _value, max_size=6), max_size=6),
    junk=st.lists(st.binary(max_size=60), max_size=4),
)
def test_any_journal_replays_to_the_end(rows: list[dict[str, Any]], junk: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "d.db"
        open_store(store, create=True).close()
        lines = [
            json.dumps(["attempts:end", {**attempt(n, status="failed"), **extra}]).encode()
            for n, extra in enumerate(rows)
        ]
        lines += [b"\x01" + j.replace(b"\n", b"") for j in junk]  # never valid JSON
        write_journal(store, lines)
        db = open_store(store)
        try:
            assert journal_files(store) == []
            assert delivery_ids(store) == {f"d-{n}" for n in range(len(rows))}
            assert drops(store).get("bad_journal_line", 0) == len(junk)
            # Still writable: a gateway's new attempts are stored.
            w = StoreWriter(store)
            assert w.start_attempt(attempt(99)) == 1
            assert w.close()
            assert "d-99" in delivery_ids(store)
        finally:
            db.close()


@settings(max_examples=200, deadline=None)
@given(value=_value, column=st.sampled_from([*_COLUMNS, "started_at_ms", "delivery_id"]))
def test_clean_row_leaves_only_values_sqlite_binds(value: Any, column: str) -> None:
    row = attempt(1, **{column: value})
    clean_row("attempts", row, now_ms=10**13)
    conn = rawdb.connect(":memory:")
    conn.execute("SELECT ?", (row[column],))  # never raises
    if column in ("attempt", "max_attempts") and row[column] is not None:
        assert 1 <= row[column] <= INT64_MAX


@pytest.mark.parametrize(
    "bad", ["--1", "²", "9" * 5000, 99999999999999999999, 0, -3, 1.5, ["1"], float("nan")]
)
def test_a_bad_attempt_number_loses_only_the_number(tmp_path: Path, bad: Any) -> None:
    w = StoreWriter(tmp_path / "d.db")
    try:
        assert w.start_attempt(attempt(1, attempt=bad)) == 1  # derived instead
        w.end_attempt(attempt(1, attempt=bad, status="delivered", ended_at_ms=2_000))
        assert w.flush()
        with rawdb.connect(w.path) as conn:
            assert conn.execute("SELECT attempt, status FROM attempts").fetchall() == [
                (1, "delivered")
            ]
        assert w.stats()["bad_value"] == 2
    finally:
        w.close()
    assert drops(w.path)["bad_value"] == 2


KILLED_GATEWAY = textwrap.dedent(
    """
    import os, signal, sys
    from opentelemetry import trace
    import otel_delivery
    from otel_delivery import arg

    otel_delivery.configure(service_name="hostile", store=sys.argv[1])

    @otel_delivery.deliver(channel="telegram", delivery_id=arg("d"))
    def send(d):
        span = trace.get_current_span()
        span.set_attribute("otel_delivery.provider_message_id", ["a", "list"])
        span.set_attribute("otel_delivery.attempt", ["not", "a", "number"])
        span.set_attribute("otel_delivery.max_attempts", "--1")

    send("dlv-list")
    os.kill(os.getpid(), signal.SIGKILL)  # before the background commit
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_list_valued_attributes_and_a_sigkill_leave_the_store_usable(tmp_path: Path) -> None:
    store = tmp_path / "d.db"
    proc = subprocess.run([sys.executable, "-c", KILLED_GATEWAY, str(store)],
                          capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    for command in (["summary"], ["failures"], ["interrupted"], ["health"],
                    ["query", "SELECT delivery_id, attempt, recipient FROM attempts"],
                    ["upgrade"]):
        result = CliRunner().invoke(main, [*command, "--store", str(store)])
        assert "Traceback" not in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit), command
        if command != ["upgrade"] and command[0] != "query":
            # readers never write: they say the stopped writer's rows are not in yet
            assert "1 journal file of stopped writers" in result.stderr, command
    assert journal_files(store) == []  # `upgrade` committed them
    with rawdb.connect(store) as conn:
        assert conn.execute(
            "SELECT delivery_id, attempt, max_attempts, provider_message_id, status FROM attempts"
        ).fetchall() == [("dlv-list", 1, None, '["a", "list"]', "delivered")]
    # A restarted gateway stores its new attempts.
    w = StoreWriter(store)
    assert w.start_attempt(attempt(7)) == 1
    assert w.close()
    assert "d-7" in delivery_ids(store)


def test_replay_is_not_stopped_by_a_row_the_store_refuses(tmp_path: Path) -> None:
    store = tmp_path / "d.db"
    db = open_store(store, create=True)
    # A row with a value no cleaning could foresee: a trigger that refuses it.
    db.execute("CREATE TRIGGER refuse BEFORE INSERT ON attempts WHEN NEW.channel = 'evil' "
               "BEGIN SELECT RAISE(ABORT, 'refused'); END")
    lines = [json.dumps(["attempts:end", attempt(1, channel="evil")]).encode(),
             json.dumps(["attempts:end", attempt(2)]).encode()]
    write_journal(store, lines)
    assert replay_orphans(db.conn, store) == 1
    db.close()
    assert delivery_ids(store) == {"d-2"}
    assert drops(store)["unwritable_row"] == 1
    assert len(quarantine_path(store).read_text().splitlines()) == 1


@settings(max_examples=300, deadline=None)
@given(value=st.one_of(
    st.text(max_size=30), st.integers(), st.sampled_from(["--1", "²", "9" * 5000, " 12 "])
))
def test_coerce_value_gives_an_int64_or_junk(value: Any) -> None:
    from otel_delivery._extract import JunkValue, coerce_value

    try:
        number = coerce_value(value, as_int=True)
    except JunkValue:
        return
    assert isinstance(number, int) and -(2**63) <= number <= INT64_MAX


@pytest.mark.parametrize("bad", ["--1", "²", "9" * 5000, 99999999999999999999])
def test_a_decorated_send_with_a_bad_attempt_number_keeps_its_row(
    tmp_path: Path, bad: Any
) -> None:
    import otel_delivery
    from otel_delivery import arg

    from .conftest import make_traced

    store = tmp_path / "d.db"
    handle = make_traced(store).handle
    try:
        @otel_delivery.deliver(channel="telegram", delivery_id=arg("d"), attempt=arg("n"))
        def send(d: str, n: Any) -> None:
            pass

        send("dlv-1", bad)
        send("dlv-1", bad)
        assert handle.force_flush()
    finally:
        handle.shutdown()
    with rawdb.connect(store) as conn:
        assert conn.execute(
            "SELECT attempt, status FROM attempts ORDER BY attempt"
        ).fetchall() == [(1, "delivered"), (2, "delivered")]
