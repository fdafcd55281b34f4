"""The demo's one error type: what went wrong, and what to do about it."""

from __future__ import annotations

__all__ = ["DemoError"]


class DemoError(RuntimeError):
    """The demo cannot run here (no local store), or its crash step failed."""
