"""What every ``otel-delivery`` command shares: the common options, reading
durations, opening the store, and printing tables and JSON (stored text shown with
its control characters escaped, see ``local_store._terminal``)."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, TypeVar

import click
import sqlite_utils

import local_store
from local_store import (
    InvalidArgumentError,
    StoreError,
    format_duration,
    open_for_reading,
    open_store,
    parse_duration,
    stopped_journals,
)
from local_store._terminal import json_safe, visible

from ._paths import STORE_ENV, resolve_store_path

__all__ = [
    "RETRY_WINDOW_ENV",
    "CliGroup",
    "duration_option",
    "in_window",
    "opened",
    "opened_for_writing",
    "optional_seconds",
    "plural",
    "print_json",
    "retry_window_option",
    "seconds",
    "store_and_json",
    "table",
    "when",
]

F = TypeVar("F", bound=Callable[..., Any])


def store_and_json(f: F) -> F:
    f = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(f)
    f = click.option(
        "--store",
        metavar="PATH",
        help=f"Store file (default: ${STORE_ENV}, "
        "else $XDG_STATE_HOME or ~/.local/state, /otel-delivery/deliveries.db).",
    )(f)
    return f


def duration_option(name: str, **kwargs: Any) -> Callable[[F], F]:
    """An option read with :func:`parse_duration` (in the command, so a bad value is
    one ``Error:`` line like every other)."""
    return click.option(name, metavar="DURATION", **kwargs)


RETRY_WINDOW_ENV = "OTEL_DELIVERY_RETRY_WINDOW"


def retry_window_option(f: F) -> F:
    """--retry-window: how long a transient failure waits for its retry before the
    delivery counts as abandoned (else $OTEL_DELIVERY_RETRY_WINDOW, else 10m)."""
    return click.option(
        "--retry-window", "retry_window", metavar="DURATION", envvar=RETRY_WINDOW_ENV,
        default=format_duration(local_store.DEFAULT_RETRY_WINDOW_SECONDS), show_default=True,
        help="A delivery whose last attempt failed transiently, with no retry for this "
        f"long, is 'abandoned' (also ${RETRY_WINDOW_ENV}).",
    )(f)


def plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else plural or word + 's'}"


@contextmanager
def opened(store: str | None) -> Iterator[sqlite_utils.Database]:
    """The store, read-only: a question never changes the store it asks. Rows that
    stopped writers left in their journals are not in it yet; say so, on stderr."""
    path = resolve_store_path(store)
    db = open_for_reading(path)
    try:
        waiting = stopped_journals(path)
        if waiting:
            click.echo(
                f"note: {waiting} journal file{'' if waiting == 1 else 's'} of stopped "
                "writers hold rows not yet in the store (run `otel-delivery upgrade`, or "
                "start the gateway, to commit them)", err=True,
            )
        yield db
    finally:
        db.close()


@contextmanager
def opened_for_writing(store: str | None) -> Iterator[sqlite_utils.Database]:
    """The store, writable: upgraded and with stopped writers' journals committed."""
    db = open_store(resolve_store_path(store))
    try:
        yield db
    finally:
        db.close()


def seconds(option: str, text: str, *, allow_zero: bool = False) -> float:
    try:
        seconds = parse_duration(text)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"{option}: {exc}") from None
    if seconds == 0 and not allow_zero:
        raise InvalidArgumentError(f"{option} must be longer than 0, got {text!r}")
    return seconds


def optional_seconds(option: str, text: str | None) -> float | None:
    return None if text is None else seconds(option, text)


# -- output --------------------------------------------------------------------------


def json_default(value: object) -> object:
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def print_json(data: object) -> None:
    # Infinity and NaN are not JSON: written as strings (see local_store._terminal).
    click.echo(json.dumps(json_safe(data), indent=2, default=json_default, allow_nan=False))


def when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def cell(value: object, width: int = 60) -> str:
    if value is None:
        return "-"
    text = visible(" ".join(str(value).split()))  # stored text may hold escapes
    return text if len(text) <= width else text[: width - 1] + "…"


def table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], *, width: int = 60
) -> str:
    """Aligned columns, numbers to the right, no borders; cells cut at ``width``."""
    numeric = [
        all(isinstance(r[i], (int, float)) or r[i] is None for r in rows) and bool(rows)
        for i in range(len(headers))
    ]
    cells = [[visible(str(h)) for h in headers]] + [[cell(v, width) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(row, widths, numeric, strict=True)
        ).rstrip()
        for row in cells
    ]
    return "\n".join(lines)


def in_window(since_seconds: float | None, start_ms: int | None = None) -> str:
    if since_seconds is None:
        return "in the store"
    start = f" (since {when(start_ms)})" if start_ms is not None else ""
    return f"in the last {format_duration(since_seconds)}{start}"


class CliGroup(click.Group):
    """Turns every library and SQLite error of every subcommand into one line.

    Usage errors (an unknown option, a missing required one, no command) stay click's:
    usage text and exit status 2. Everything else is one ``Error: ...`` line, exit 1.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except InvalidArgumentError as exc:
            raise click.ClickException(visible(self._in_flags(str(exc)))) from None
        except StoreError as exc:
            raise click.ClickException(visible(str(exc))) from None
        except sqlite3.Error as exc:
            raise click.ClickException(visible(f"SQLite: {exc}")) from None
        except BrokenPipeError:
            raise  # output piped into `head`: click exits quietly
        except OSError as exc:
            raise click.ClickException(visible(str(exc))) from None
        except OverflowError as exc:  # a number past what SQLite holds, however it came
            raise click.ClickException(f"a number is out of range ({exc})") from None

    def _in_flags(self, message: str) -> str:
        """A library message starts with the Python parameter it is about
        (``max_failure_rate must be ...``); the operator typed a flag."""
        match = re.match(r"([a-z]+(?:_[a-z]+)*)\b", message)
        if match is None:
            return message
        name = match.group(1)
        for command in self.commands.values():
            for param in command.params:
                if isinstance(param, click.Option) and param.name in (
                    name, name.removesuffix("seconds")
                ):
                    return max(param.opts, key=len) + message[match.end():]
        return message
