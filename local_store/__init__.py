"""A local, prunable SQLite store of delivery attempts. Knows nothing of OpenTelemetry.

``otel_delivery`` translates spans into the plain rows this package writes; operators
read them back with the query functions here, the ``otel-delivery`` CLI, or plain SQL.
"""

from __future__ import annotations

from ._schema import SCHEMA_VERSION, open_store
from ._writer import StoreWriter
from .exceptions import (
    InvalidArgumentError,
    QueryRefusedError,
    StoreCorruptError,
    StoreError,
    StoreNotFoundError,
    StoreVersionError,
)

__all__ = [
    "SCHEMA_VERSION",
    "InvalidArgumentError",
    "QueryRefusedError",
    "StoreCorruptError",
    "StoreError",
    "StoreNotFoundError",
    "StoreVersionError",
    "StoreWriter",
    "open_store",
]
