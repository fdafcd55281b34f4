"""The errors otel_delivery raises: only at configuration time, never from a wrapped call."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A ``configure()`` or decorator argument is invalid; the message says which and why."""
