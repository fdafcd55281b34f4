"""OpenTelemetry instrumentation for chat/AI gateway deliveries.

One ``configure()`` call at start-up and one decorator line per step:

>>> otel = otel_delivery.configure(service_name="gateway")  # doctest: +SKIP
>>> @otel_delivery.deliver(channel="telegram", recipient=otel_delivery.arg("chat_id"))
... def send(chat_id, text): ...  # doctest: +SKIP

Spans go to the tracer provider (and OTLP when configured); delivery spans are
mirrored into a local SQLite store that ``otel-delivery`` (the CLI) queries.
"""

from __future__ import annotations

from ._chat_libraries import retry_after_seconds
from ._classify import default_classifier
from ._configure import Instrumentation, configure
from ._decorators import ai_run, deliver, enqueue, inbound
from ._extract import arg
from ._paths import default_store_path, resolve_store_path
from ._propagation import carry
from ._receipts import receipt
from .exceptions import ConfigError

__all__ = [
    "ConfigError",
    "Instrumentation",
    "ai_run",
    "arg",
    "carry",
    "configure",
    "default_classifier",
    "default_store_path",
    "deliver",
    "enqueue",
    "inbound",
    "receipt",
    "resolve_store_path",
    "retry_after_seconds",
]
