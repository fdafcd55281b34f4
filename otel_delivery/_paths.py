"""Where the store lives when nobody says: shared by ``configure()`` and the CLI."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["STORE_ENV", "default_store_path", "resolve_store_path"]

STORE_ENV = "OTEL_DELIVERY_STORE"


def default_store_path() -> Path:
    """``$XDG_STATE_HOME/otel-delivery/deliveries.db``, or under ``~/.local/state``."""
    state = os.environ.get("XDG_STATE_HOME") or ""
    base = Path(state) if state.strip() else Path.home() / ".local" / "state"
    return base / "otel-delivery" / "deliveries.db"


def resolve_store_path(store: str | os.PathLike[str] | None = None) -> Path:
    """The argument, then ``$OTEL_DELIVERY_STORE``, then :func:`default_store_path`.

    >>> resolve_store_path("/tmp/x.db")
    PosixPath('/tmp/x.db')
    """
    if store is not None and str(store) != "":
        return Path(store).expanduser()
    env = os.environ.get(STORE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return default_store_path()
