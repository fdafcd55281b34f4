"""A local, prunable SQLite store of delivery attempts. Knows nothing of OpenTelemetry.

``otel_delivery`` translates spans into the plain rows this package writes; operators
read them back with the query functions here, the ``otel-delivery`` CLI, or plain SQL.
"""

from __future__ import annotations

from ._durations import format_duration, parse_duration
from ._prune import PruneResult, prune
from ._queries import (
    ATTEMPT_STATUSES,
    DELIVERY_OUTCOMES,
    SUMMARY_GROUPINGS,
    HealthReport,
    Summary,
    SummaryGroup,
    UndeliveredItem,
    UndeliveredReport,
    failures,
    health,
    interrupted,
    summary,
    undelivered,
)
from ._reading import DeliveryOutcome
from ._readonly import readonly_query
from ._schema import SCHEMA_VERSION, open_store
from ._story import TraceStory, trace_story
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
    "DELIVERY_OUTCOMES",
    "SCHEMA_VERSION",
    "SUMMARY_GROUPINGS",
    "DeliveryOutcome",
    "HealthReport",
    "InvalidArgumentError",
    "NotFoundError",
    "PruneResult",
    "QueryLimitError",
    "QueryRefusedError",
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
    "failures",
    "format_duration",
    "health",
    "interrupted",
    "open_store",
    "parse_duration",
    "prune",
    "readonly_query",
    "summary",
    "trace_story",
    "undelivered",
]
