"""What a demo run hands back: where it wrote, what it did, and where to look."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DemoCounts", "DemoResult"]


@dataclass(frozen=True)
class DemoCounts:
    """What the gateway counted as it went, independently of the store.

    ``attempts[channel][status]``, status being ``delivered``, ``failed`` or
    ``interrupted``; ``deliveries[outcome]``, outcome being ``delivered`` or ``failed``
    (a delivery interrupted by the crash was retried and counts by how that ended).
    """

    inbound: int
    ai_runs: int
    replies: int
    enqueued: int
    enqueue_failed: int
    attempts: dict[str, dict[str, int]]
    deliveries: dict[str, int]
    reloaded_after_restart: int
    receipts: dict[str, int] = field(default_factory=dict)  # WhatsApp statuses, by status

    def attempts_by_status(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for statuses in self.attempts.values():
            for status, n in statuses.items():
                totals[status] = totals.get(status, 0) + n
        return totals


@dataclass(frozen=True)
class DemoResult:
    """One demo run. ``stories`` maps a story name (see ``STORIES``) to an inbound id.

    >>> result = run_demo(store="/tmp/demo.db")  # doctest: +SKIP
    >>> result.stories["blocked"]  # doctest: +SKIP
    'tg-3f9c-017'
    """

    store: Path
    seed: int
    messages: int
    channels: tuple[str, ...]
    counts: DemoCounts
    stories: dict[str, str] = field(default_factory=dict)
    started_at_ms: int = 0
    elapsed_seconds: float = 0.0

    @property
    def rate_limited_inbound_id(self) -> str:
        """Delivered on the retry after a 429."""
        return self.stories["rate_limited"]

    @property
    def blocked_inbound_id(self) -> str:
        """Failed permanently: the user blocked the bot."""
        return self.stories["blocked"]

    @property
    def undelivered_inbound_id(self) -> str:
        """Reply produced, then lost at enqueue."""
        return self.stories["enqueue_failed"]

    @property
    def interrupted_inbound_id(self) -> str:
        """Its first attempt was cut short by the crash."""
        return self.stories["interrupted"]
