"""The errors ``local_store`` raises. Each one says what to do next.

All subclass :class:`StoreError`, so a caller (the CLI) can turn any of them
into one line and a non-zero exit code.
"""

from __future__ import annotations

__all__ = [
    "InvalidArgumentError",
    "NotFoundError",
    "QueryLimitError",
    "QueryRefusedError",
    "StoreCorruptError",
    "StoreError",
    "StoreNotFoundError",
    "StoreUpgradeNeededError",
    "StoreVersionError",
]


class StoreError(Exception):
    """Base class for every error raised by ``local_store``."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """The store file does not exist (and we were asked not to create it)."""


class StoreCorruptError(StoreError):
    """The file exists but is not a readable otel-delivery store.

    ``damaged`` is True when SQLite itself cannot read the file (a damaged store
    that a writer may move aside), False when it is a healthy file of another kind.
    """

    damaged: bool = False


class StoreVersionError(StoreError):
    """The store was written by a newer otel-delivery schema than this one knows."""


class StoreUpgradeNeededError(StoreError):
    """The store has an older schema and the caller asked not to upgrade it now."""


class InvalidArgumentError(StoreError, ValueError):
    """A query argument (duration, limit, grouping...) is out of range."""


class QueryRefusedError(StoreError, ValueError):
    """Read-only ``query`` was given SQL that would write, attach or change pragmas."""


class QueryLimitError(StoreError):
    """Read-only ``query`` ran past its time limit, or its result past its size limit."""


class NotFoundError(StoreError, LookupError):
    """A message, trace or delivery id asked about has no rows in the store."""
