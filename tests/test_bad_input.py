"""Bad input, property-based: the wrapped behaviour never changes, the CLI never crashes."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider

import otel_delivery
from otel_delivery import arg
from otel_delivery.cli import main
from tests import rawdb

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


class StrRaises:
    def __str__(self) -> str:
        raise RuntimeError("__str__ exploded")

    __repr__ = __str__


class WeirdError(Exception):
    def __str__(self) -> str:
        raise ValueError("cannot even describe myself")


junk_values = st.one_of(
    st.none(),
    st.binary(max_size=64),
    st.text(max_size=50),
    st.text(min_size=5000, max_size=20000),
    st.sampled_from(["\ud800", "a\udcffb", "\x00nul", "\u202eRTL"]),  # lone surrogates and co
    st.integers(),
    st.floats(allow_nan=True),
    st.booleans(),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.lists(st.integers(), max_size=3),
    st.builds(StrRaises),
    st.builds(object),
)

strange_errors = st.one_of(
    st.text(max_size=2000).map(RuntimeError),
    st.sampled_from(["\ud800", "x" * 100_000, "", "\n\n\t"]).map(ValueError),
    st.binary(max_size=30).map(lambda b: OSError(b)),
    st.just(WeirdError()),
    st.just(KeyError(StrRaises())),
    st.tuples(st.integers(), st.text(max_size=10)).map(lambda t: ConnectionError(*t)),
)


@pytest.fixture(scope="module")
def otel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[otel_delivery.Instrumentation]:
    handle = otel_delivery.configure(
        store=tmp_path_factory.mktemp("bad") / "d.db", tracer_provider=TracerProvider()
    )
    yield handle
    handle.shutdown()


@SETTINGS
@given(value=junk_values)
def test_any_extractor_result_leaves_the_call_unchanged(
    otel: otel_delivery.Instrumentation, value: Any
) -> None:
    sentinel = object()

    @otel_delivery.deliver(
        channel=lambda v: v, recipient=lambda v: v, delivery_id=lambda v: v,
        attempt=lambda v: v, max_attempts=lambda v: v, conversation=lambda v: v,
    )
    def send(v: Any) -> object:
        return sentinel

    assert send(value) is sentinel


@SETTINGS
@given(value=junk_values)
def test_static_attribute_values_are_checked_at_decoration(value: Any) -> None:
    try:
        wrapped = otel_delivery.inbound(attributes={"x": value})(lambda: 7)
    except TypeError:
        return  # refused clearly, at decoration (import) time
    assert wrapped() == 7


@SETTINGS
@given(error=strange_errors)
def test_any_exception_passes_through_as_itself(
    otel: otel_delivery.Instrumentation, error: BaseException
) -> None:
    @otel_delivery.deliver(channel="telegram", body=arg("text"))
    def send(text: Any) -> None:
        raise error

    with pytest.raises(type(error)) as info:
        send(StrRaises())
    assert info.value is error
    assert otel.force_flush()
    conn = rawdb.connect(otel.store_path or "")
    text = conn.execute("SELECT error_text FROM attempts ORDER BY id DESC LIMIT 1").fetchone()[0]
    conn.close()
    assert isinstance(text, str) and len(text) <= 512


class Callable:
    def __call__(self, x: int) -> int:
        return x + 1


def test_odd_callables(otel: otel_delivery.Instrumentation) -> None:
    assert otel_delivery.deliver(Callable())(1) == 2
    assert otel_delivery.deliver(lambda x: x * 2)(4) == 8
    assert otel_delivery.deliver(functools.partial(pow, 2))(5) == 32
    assert otel_delivery.ai_run(len)([1, 2, 3]) == 3

    async def coro(x: int) -> int:
        return x

    wrapped = otel_delivery.deliver(coro)
    never_awaited = wrapped(1)
    never_awaited.close()
    assert asyncio.run(wrapped(3)) == 3
    with pytest.raises(TypeError, match="wrap functions"):
        otel_delivery.deliver(42)  # type: ignore[call-overload]


# -- the CLI ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from local_store import open_store

    path = tmp_path_factory.mktemp("cli") / "d.db"
    open_store(path, create=True).close()
    return path


def _cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _one_clean_line(result: Any) -> None:
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert lines and (lines[-1].startswith("Error:") or "Usage:" in result.output)


@SETTINGS
@given(duration=st.text(max_size=12))
def test_any_duration_is_accepted_or_refused_in_one_line(store: Path, duration: str) -> None:
    result = _cli("summary", "--since", duration, "--store", str(store))
    if result.exit_code != 0:
        _one_clean_line(result)


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM attempts",
        "INSERT INTO drops VALUES ('x', 1, 1, 1, NULL)",
        "UPDATE attempts SET status = 'delivered'",
        "DROP TABLE attempts",
        "CREATE TABLE evil (x)",
        "ATTACH DATABASE '/tmp/evil.db' AS evil",
        "PRAGMA journal_mode = DELETE",
        "PRAGMA user_version = 99",
        "SELECT 1; DELETE FROM attempts",
        "VACUUM",
        "not even sql",
    ],
)
def test_query_refuses_anything_but_reading(store: Path, sql: str) -> None:
    result = _cli("query", sql, "--store", str(store))
    _one_clean_line(result)
    conn = rawdb.connect(store)
    assert conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'evil'").fetchone() == (0,)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


@pytest.mark.parametrize("flag", ["--nope", "--since=-1d", "--limit=0", "--by=moon"])
def test_bad_flags_give_one_line(store: Path, flag: str) -> None:
    command = "failures" if "limit" in flag else "summary"
    _one_clean_line(_cli(command, flag, "--store", str(store)))


@pytest.mark.parametrize("kind", ["missing", "empty", "garbage", "newer", "foreign", "directory"])
@pytest.mark.parametrize("command", [["summary"], ["interrupted"], ["query", "SELECT 1"],
                                     ["health"], ["prune", "--older-than", "1d",
                                                  "--keep-failed-for", "2d"]])
def test_bad_stores_give_one_line(tmp_path: Path, kind: str, command: list[str]) -> None:
    path = tmp_path / "d.db"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(b"\x00garbage" * 100)
    elif kind == "newer":
        from local_store import open_store

        db = open_store(path, create=True)
        db.execute("INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
                   "VALUES ('otel_delivery', 'm999_future', 'later')")
        db.conn.commit()
        db.close()
    elif kind == "foreign":
        conn = rawdb.connect(path)
        conn.execute("CREATE TABLE customers (id INTEGER)")
        conn.commit()
        conn.close()
    elif kind == "directory":
        path.mkdir()
    before = path.read_bytes() if path.is_file() else None
    _one_clean_line(_cli(*command, "--store", str(path)))
    if before is not None:
        assert path.read_bytes() == before  # a bad store is never modified by a reader
