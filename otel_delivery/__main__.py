"""``python -m otel_delivery``: the same as the ``otel-delivery`` command."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    main(prog_name="otel-delivery")
