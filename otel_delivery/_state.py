"""What the decorators read at call time: the tracer, the policies and the counters.

Decorators are applied at import, long before ``configure()`` runs, so they look
the runtime up on every call (one global read). Before ``configure()``, or after
its handle is shut down, they use the global tracer provider with default policies,
which is a no-op unless the application set up OpenTelemetry itself.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.trace import Tracer

from local_store._ratelimit import RateLimitedLog

from ._attributes import ERROR_TEXT_LIMIT
from ._classify import Classifier

__all__ = ["Counters", "Runtime", "current", "install", "is_configured", "uninstall"]

_log = logging.getLogger("otel_delivery")
ratelimited_log = RateLimitedLog(_log)

INSTRUMENTATION_NAME = "otel_delivery"


class Counters:
    """Thread-safe counts of the problems instrumentation absorbed.

    Each count is also handed to ``sink`` (the store writer's drop counter, when
    mirroring), so the problems can be queried from the store's ``drops`` table.
    """

    def __init__(self, sink: Callable[[str, int, str | None], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self.sink = sink

    def add(self, reason: str, n: int = 1, error: str | None = None) -> None:
        with self._lock:
            self._counts[reason] = self._counts.get(reason, 0) + n
        sink = self.sink
        if sink is not None:
            try:
                sink(reason, n, error)
            except Exception:
                pass

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def make_pseudonymizer(key: bytes) -> Callable[[str], str]:
    """A keyed hash: the same id always maps to the same pseudonym, unreadable without key."""

    def pseudonymize(value: str) -> str:
        digest = hmac.new(key, value.encode("utf-8", "replace"), hashlib.sha256).hexdigest()
        return "p:" + digest[:24]

    return pseudonymize


@dataclass
class Runtime:
    tracer: Tracer
    classifier: Classifier | None = None
    pseudonymize: Callable[[str], str] | None = None
    error_text_limit: int = ERROR_TEXT_LIMIT
    counters: Counters = field(default_factory=Counters)
    enabled: bool = True
    # (channel, provider message id) -> (trace id, span id) of the attempt that sent it
    find_attempt: Callable[[str, str], tuple[str, str] | None] | None = None


_lock = threading.Lock()
_installed: Runtime | None = None
_fallback: Runtime | None = None


def current() -> Runtime:
    """The runtime installed by ``configure()``, or a default over the global provider."""
    rt = _installed
    if rt is not None:
        return rt
    global _fallback
    if _fallback is None:
        _fallback = Runtime(tracer=trace.get_tracer(INSTRUMENTATION_NAME))
    return _fallback


def is_configured(rt: Runtime) -> bool:
    """True when ``rt`` came from ``configure()`` (not the unconfigured default)."""
    return rt is _installed


def install(rt: Runtime) -> None:
    global _installed
    with _lock:
        _installed = rt


def uninstall(rt: Runtime) -> None:
    """Remove ``rt`` if it is still the installed one (a later configure() may have won)."""
    global _installed
    with _lock:
        if _installed is rt:
            _installed = None
