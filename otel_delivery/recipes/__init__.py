"""Small, documented patterns built on the public API; copy them or import them.

* :mod:`otel_delivery.recipes.durable_queue`: a SQLite delivery queue whose retries,
  after a restart, join the original trace and continue its attempt numbers.
"""

from __future__ import annotations

from .durable_queue import DurableQueue, QueuedDelivery

__all__ = ["DurableQueue", "QueuedDelivery"]
