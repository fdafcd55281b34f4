"""Issue 15: what the CLI prints, whatever the store holds or the operator types.

Control sequences in stored text reach the terminal only as visible escapes (tested
on a real pseudo-terminal, the real CLI in a child process); ``--json`` keeps the
values exact and stays valid JSON; numbers out of range give one ``Error:`` line.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from local_store._terminal import visible
from otel_delivery.cli import main
from tests.store_builder import StoreBuilder

REPO = Path(__file__).resolve().parents[1]
CLEAR = "\x1b[2J\x1b[H"
TITLE = "\x1b]0;pwned\x07"
UP_ERASE = "\x1b[1A\x1b[2K" * 3
C1_CSI = "\x9b2J"
HOSTILE = f"boom{CLEAR}{TITLE}{UP_ERASE}{C1_CSI}\u202etxt.exe\x00end"
# What may reach the terminal: printable text, newline, and the tty's carriage return.
INBOUND = f"in-{CLEAR}{TITLE}{C1_CSI}"  # no NUL: it is also passed as an argument
RAW_CONTROL = re.compile("[\x00-\x09\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e]")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    b = StoreBuilder(tmp_path_factory.mktemp("hostile") / "d.db")
    m = b.message(inbound_id=INBOUND, channel=f"tg{CLEAR}", minutes_ago=20)
    b.attempt(m.trace_id, f"d-{TITLE}", status="failed", minutes_ago=19,
              channel=f"tg{CLEAR}", error_type=f"Err{UP_ERASE}", error_text=HOSTILE,
              failure_class="permanent", final=1, inbound_id=m.inbound_id,
              extra={"recipient": f"chat{C1_CSI}"})
    b.flush()
    b.close()
    yield b.path


def on_pty(*args: str | Path) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal as its stdout and stderr; (exit code, text)."""
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "otel_delivery", *map(str, args)],
        stdout=slave, stderr=slave, stdin=subprocess.DEVNULL, cwd=REPO,
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed its end
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=30)
    finally:
        os.close(master)
    return code, b"".join(chunks).decode("utf-8", "replace")


COMMANDS = [
    ["failures"],
    ["summary", "--by", "channel"],
    ["summary", "--by", "error"],
    ["undelivered", "--grace", "0s"],
    ["health"],
    ["trace", "--inbound", INBOUND],
    ["query", "SELECT * FROM attempts"],
    ["query", "SELECT error_text AS \"x\x1b[2Jy\" FROM attempts"],
    ["failures", "--store", f"/nonexistent/{CLEAR}.db"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_no_control_character_reaches_the_terminal(store: Path, command: list[str]) -> None:
    args = command if "--store" in command else [*command, "--store", str(store)]
    code, text = on_pty(*args)
    assert code in (0, 1), text
    assert "Traceback" not in text
    found = RAW_CONTROL.findall(text)
    assert found == [], f"raw control characters on the terminal: {found!r}\n{text}"
    assert "\\x1b" in text  # shown, not hidden


def test_json_output_keeps_the_values_exact(store: Path) -> None:
    result = CliRunner().invoke(main, ["failures", "--json", "--store", str(store)])
    assert result.exit_code == 0
    [row] = json.loads(result.stdout)
    assert row["error_text"] == HOSTILE
    assert row["channel"] == f"tg{CLEAR}"
    assert "\x1b" not in result.stdout  # escaped as \u001b by JSON itself


@settings(max_examples=200)
@given(st.text())
def test_visible_leaves_no_control_character(text: str) -> None:
    shown = visible(text)
    assert not RAW_CONTROL.search(shown.replace("\n", "").replace("\r", ""))
    assert "\n" not in shown
    if not RAW_CONTROL.search(text) and "\n" not in text and "\r" not in text:
        assert shown == text


@pytest.mark.parametrize("sql", ["SELECT 1e999, -1e999", "SELECT 9e999 * 0",
                                 "SELECT json_object('x', 1e999)"])
def test_query_json_is_valid_json(store: Path, sql: str) -> None:
    result = CliRunner().invoke(main, ["query", sql, "--json", "--store", str(store)])
    assert result.exit_code == 0, result.output

    def refuse(name: str) -> None:
        raise AssertionError(f"not JSON: {name}")

    data = json.loads(result.stdout, parse_constant=refuse)
    if sql == "SELECT 1e999, -1e999":
        assert data["rows"] == [["Infinity", "-Infinity"]]


BIG = "99999999999999999999"
OUT_OF_RANGE = [
    ["summary", "--since", f"{BIG}w"],
    ["failures", "--since", f"{BIG}w"],
    ["failures", "--limit", BIG],
    ["undelivered", "--since", f"{BIG}w"],
    ["undelivered", "--grace", f"{BIG}w"],
    ["interrupted", "--since", f"{BIG}w"],
    ["interrupted", "--limit", BIG],
    ["health", "--since", f"{BIG}w"],
    ["health", "--min-attempts-for-rate", BIG],
    ["prune", "--older-than", f"{BIG}w", "--keep-failed-for", f"{BIG}w"],
    ["prune", "--older-than", "1d", "--keep-failed-for", "2d", "--batch-size", BIG],
    ["prune", "--older-than", "1d", "--keep-failed-for", "2d", "--max-attempts", BIG],
    ["query", "SELECT ?", "--param", BIG],
]


@pytest.mark.parametrize("command", OUT_OF_RANGE, ids=lambda c: "-".join(c[:2]))
def test_out_of_range_numbers_give_one_error_line(store: Path, command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--store", str(store)])
    if command[0] == "query":  # a parameter is text to SQLite: no overflow at all
        assert result.exit_code == 0, result.output
        return
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
