"""Issue 15: read-only ``query`` calls only listed functions, and always stops."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from local_store import QueryLimitError, QueryRefusedError, open_store, readonly_query
from otel_delivery.cli import main

REPO = Path(__file__).resolve().parents[1]
ENDLESS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("q") / "d.db"
    open_store(path, create=True).close()
    return path


@pytest.mark.parametrize("sql", [
    "SELECT fts3_tokenizer('simple')",
    "SELECT load_extension('/tmp/evil.so')",
    "SELECT sqlite_compileoption_get(0)",
    "SELECT FTS3_TOKENIZER('simple')",
])
def test_functions_outside_the_list_are_refused_by_name(store: Path, sql: str) -> None:
    with pytest.raises(QueryRefusedError, match="cannot call"):
        readonly_query(store, sql)


@pytest.mark.parametrize("sql", [
    "SELECT abs(-1), coalesce(NULL, 1), iif(1, 2, 3), printf('%d', 1), substr('ab', 1, 1)",
    "SELECT count(*), group_concat(reason), sum(count), total(count) FROM drops",
    "SELECT row_number() OVER (), rank() OVER () FROM (SELECT 1)",
    "SELECT strftime('%s', 'now'), date('now'), unixepoch(), current_timestamp",
    "SELECT json_extract('{\"a\": 1}', '$.a'), '{\"a\": 1}' ->> 'a', json_object('k', 1)",
    "SELECT value FROM json_each('[1, 2]')",
    "SELECT sqrt(4), pi(), ln(2), floor(1.5), pow(2, 3)",
    "SELECT * FROM v_attempts, v_failures, v_deliveries, v_undelivered, v_drops",
    "SELECT typeof(1), hex('a'), lower('A'), upper('a'), length('abc'), instr('ab', 'b')",
])
def test_core_functions_and_every_view_work(store: Path, sql: str) -> None:
    readonly_query(store, sql)


def test_an_endless_recursive_query_stops_at_its_time_limit(store: Path) -> None:
    started = time.monotonic()
    with pytest.raises(QueryLimitError, match="time limit"):
        readonly_query(store, ENDLESS + "SELECT count(*) FROM c", timeout_seconds=0.5)
    assert time.monotonic() - started < 5


def test_an_endless_result_stops_at_its_size_limit(store: Path) -> None:
    started = time.monotonic()
    with pytest.raises(QueryLimitError, match="result passed"):
        readonly_query(store, ENDLESS + "SELECT x, printf('%.100c', 'x') FROM c",
                       max_result_bytes=20 * 1024 * 1024)
    assert time.monotonic() - started < 20


def test_a_huge_value_is_refused(store: Path) -> None:
    if sys.version_info < (3, 11):
        pytest.skip("Connection.setlimit needs Python 3.11")
    with pytest.raises(QueryLimitError, match="value it built"):
        readonly_query(store, "SELECT zeroblob(1000000000)")


def test_cli_query_timeout_is_one_error_line(store: Path) -> None:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "otel_delivery", "query", ENDLESS + "SELECT count(*) FROM c",
         "--timeout", "1s", "--store", str(store)],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.startswith("Error: query stopped after 1s")
    assert proc.stderr.count("\n") == 1
    assert time.monotonic() - started < 30


def test_cli_default_result_limit_stops_an_endless_select(store: Path) -> None:
    # Unbounded, this grows ~100 MB/s until MemoryError; it now stops at 256 MB of
    # result, or the 30 s time limit, whichever comes first.
    result = CliRunner().invoke(main, ["query", ENDLESS + "SELECT x FROM c",
                                       "--store", str(store)])
    assert result.exit_code == 1
    assert result.output.startswith("Error: query stopped")


@pytest.mark.parametrize("flag", ["--timeout=0", "--timeout=-1s", "--timeout=soon"])
def test_bad_timeouts_are_one_error_line(store: Path, flag: str) -> None:
    result = CliRunner().invoke(main, ["query", "SELECT 1", flag, "--store", str(store)])
    assert result.exit_code == 1
    assert result.output.startswith("Error:") and result.output.count("\n") == 1
