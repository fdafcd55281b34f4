"""A local, prunable SQLite store of delivery attempts. Knows nothing of OpenTelemetry.

``otel_delivery`` translates spans into the plain rows this package writes; operators
read them back with the query functions here, the ``otel-delivery`` CLI, or plain SQL.
"""

from __future__ import annotations

from ._compact import CompactResult, compact
from ._durations import format_duration, parse_duration
from ._failures import failures, interrupted
from ._health import MISUSE_REASONS, HealthReport, health
from ._outcome import DEFAULT_RETRY_WINDOW_SECONDS
from ._prune import PruneResult, prune
from ._reading import DeliveryOutcome
from ._readonly import readonly_query
from ._receipts import RECEIPT_STATUSES, AttemptFinder, ReceiptRates
from ._retention import (
    DEFAULT_KEEP_DELIVERED_FOR_SECONDS,
    DEFAULT_KEEP_FAILED_FOR_SECONDS,
    RetentionKeeper,
)
from ._schema import SCHEMA_VERSION, open_for_reading, open_store, stopped_journals
from ._story import TraceStory, trace_story
from ._summary import (
    ATTEMPT_STATUSES,
    DELIVERY_OUTCOMES,
    SUMMARY_GROUPINGS,
    Summary,
    SummaryGroup,
    summary,
)
from ._undelivered import UndeliveredItem, UndeliveredReport, undelivered
from ._writer import StoreWriter
from .exceptions import (
    InvalidArgumentError,
    NotFoundError,
    QueryLimitError,
    QueryRefusedError,
    StoreCorruptError,
    StoreError,
    StoreNotFoundError,
    StoreUpgradeNeededError,
    StoreVersionError,
)

__all__ = [
    "ATTEMPT_STATUSES",
    "DEFAULT_KEEP_DELIVERED_FOR_SECONDS",
    "DEFAULT_KEEP_FAILED_FOR_SECONDS",
    "DEFAULT_RETRY_WINDOW_SECONDS",
    "DELIVERY_OUTCOMES",
    "MISUSE_REASONS",
    "RECEIPT_STATUSES",
    "SCHEMA_VERSION",
    "SUMMARY_GROUPINGS",
    "AttemptFinder",
    "CompactResult",
    "DeliveryOutcome",
    "HealthReport",
    "InvalidArgumentError",
    "NotFoundError",
    "PruneResult",
    "QueryLimitError",
    "QueryRefusedError",
    "ReceiptRates",
    "RetentionKeeper",
    "StoreCorruptError",
    "StoreError",
    "StoreNotFoundError",
    "StoreUpgradeNeededError",
    "StoreVersionError",
    "StoreWriter",
    "Summary",
    "SummaryGroup",
    "TraceStory",
    "UndeliveredItem",
    "UndeliveredReport",
    "compact",
    "failures",
    "format_duration",
    "health",
    "interrupted",
    "open_for_reading",
    "open_store",
    "parse_duration",
    "prune",
    "readonly_query",
    "stopped_journals",
    "summary",
    "trace_story",
    "undelivered",
]
