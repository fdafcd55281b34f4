"""Side-by-side measurement: alternate the variants, warm up, repeat, take medians.

Absolute times on a shared 2-core machine are noise, so every comparison is a ratio
taken within one round (the variants run back to back, in an order that rotates from
round to round), and the result is the median of those per-round ratios with its
spread (first and third quartile).
"""

from __future__ import annotations

import gc
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Result", "Rounds", "alternate", "quartiles"]

# A variant runs one sample and returns its cost in seconds per unit (per call, per span).
Sample = Callable[[], float]


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(q1, median, q3); with fewer than 4 values, (min, median, max)."""
    if not values:
        return (float("nan"),) * 3
    if len(values) < 4:
        return min(values), statistics.median(values), max(values)
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


@dataclass
class Rounds:
    """Per-variant samples from :func:`alternate`, in seconds per unit."""

    samples: dict[str, list[float]] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.samples[name])

    def ratios(self, a: str, b: str) -> list[float]:
        """Per-round ``a / b`` (round i of each variant was taken side by side)."""
        return [x / y for x, y in zip(self.samples[a], self.samples[b], strict=True) if y > 0]


def alternate(
    variants: Mapping[str, Sample], *, rounds: int, warmup: int = 1
) -> Rounds:
    """Run every variant once per round, rotating the order, after ``warmup`` rounds."""
    names = list(variants)
    out = Rounds({name: [] for name in names})
    for r in range(warmup + rounds):
        k = r % len(names)
        order = names[k:] + names[:k]
        if r % 2:
            order.reverse()
        for name in order:
            gc.collect()
            cost = variants[name]()
            if r >= warmup:
                out.samples[name].append(cost)
    return out


@dataclass
class Result:
    """One row of the results table.

    ``a`` and ``b`` are medians in ``unit``; ``ratio`` is the median per-round ratio
    (``a / b`` unless the measure says otherwise), ``spread`` its quartiles.
    """

    id: str
    measure: str
    a_label: str
    b_label: str
    a: float | None
    b: float | None
    unit: str
    ratio: float | None
    spread: tuple[float, float] | None
    target: str
    met: bool | None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "measure": self.measure, "a_label": self.a_label,
            "b_label": self.b_label, "a": self.a, "b": self.b, "unit": self.unit,
            "ratio": self.ratio, "spread": list(self.spread) if self.spread else None,
            "target": self.target, "met": self.met, "note": self.note, "extra": self.extra,
        }


def ratio_stats(ratios: list[float]) -> tuple[float, tuple[float, float]]:
    q1, med, q3 = quartiles(ratios)
    return med, (q1, q3)
