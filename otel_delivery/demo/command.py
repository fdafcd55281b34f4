"""``otel-delivery demo``: the click command; the work is in :func:`run_demo`."""

from __future__ import annotations

import click

from local_store import StoreError

from ..exceptions import ConfigError
from ._run import run_demo
from ._scenario import MAX_MESSAGES, MIN_MESSAGES
from .exceptions import DemoError

__all__ = ["demo"]


@click.command()
@click.option(
    "--store",
    metavar="PATH",
    default=None,
    help="Store file to write (default: $OTEL_DELIVERY_STORE, "
    "else $XDG_STATE_HOME or ~/.local/state, /otel-delivery/deliveries.db).",
)
@click.option("--seed", type=int, default=7, show_default=True,
              help="Same seed, same counts.")
@click.option("--messages", type=click.IntRange(MIN_MESSAGES, MAX_MESSAGES), default=40,
              show_default=True, help="Inbound messages to simulate.")
@click.option("--otlp-endpoint", metavar="URL", default=None,
              help="Also send the spans over OTLP (default: $OTEL_EXPORTER_OTLP_ENDPOINT).")
def demo(store: str | None, seed: int, messages: int, otlp_endpoint: str | None) -> None:
    """Run a simulated chat gateway into the store, then print the operator's report.

    Receivers for telegram, slack, whatsapp and discord, an agent loop and one sender
    per channel run as asyncio tasks. Replies meet rate limits, a blocked user, a
    too-long message, timeouts, an enqueue failure the gateway swallows, and a sender
    killed with SIGKILL mid-send; the delivery queue then restarts from its file and
    its retries join their original traces. Takes a few seconds.

    \b
    Example:
      otel-delivery demo --seed 7 --store /tmp/demo.db
      otel-delivery trace --inbound <an id from the report> --store /tmp/demo.db
    """
    try:
        run_demo(store=store, seed=seed, messages=messages, otlp_endpoint=otlp_endpoint)
    except (DemoError, ConfigError, StoreError, OSError) as exc:
        raise click.ClickException(str(exc)) from None


if __name__ == "__main__":
    demo()
