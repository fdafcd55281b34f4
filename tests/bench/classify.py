"""Measure 8: what classifying a failure costs, by the length of its error text.

The default classifier reads only both ends of the message (issue 15: reading all of
it added 345 ms to a failing call at 1 MB, and 18.7 s at 50 MB). The exception is
built before the clock starts, as a failing send builds it; what is timed is
``default_classifier(exc)``, for a text of 1 KB (the baseline), 1 MB and 50 MB
whose key phrase comes first, side by side in alternating rounds. Target: the time
does not depend on the size (each ratio to 1 KB at most 2).

Run alone: ``python -m tests.bench.classify``.
"""

from __future__ import annotations

import time
from typing import Any

from otel_delivery._classify import default_classifier

from .timing import Result, alternate, ratio_stats

__all__ = ["run_classify"]

SIZES = {"1KB": 1_000, "1MB": 1_000_000, "50MB": 50_000_000}
KEY = "Forbidden: bot was blocked by the user. "
CALLS = 200


def _sample(exc: BaseException, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        if default_classifier(exc) != "permanent":
            raise AssertionError("the key phrase was not read")
    return (time.perf_counter() - started) / calls


def run_classify(*, rounds: int, warmup: int = 1) -> tuple[list[Result], dict[str, Any]]:
    errors = {
        name: RuntimeError(KEY + "x" * (n - len(KEY))) for name, n in SIZES.items()
    }
    samples = alternate(
        {name: (lambda e=exc: _sample(e, CALLS)) for name, exc in errors.items()},
        rounds=rounds, warmup=warmup,
    )
    results = []
    for name in ("1MB", "50MB"):
        ratio, spread = ratio_stats(samples.ratios(name, "1KB"))
        results.append(Result(
            id=f"8-classify-{name}", measure=f"classify a {name} error text vs 1 KB",
            a_label=name, b_label="1KB", a=samples.median(name) * 1e6,
            b=samples.median("1KB") * 1e6, unit="us/call", ratio=ratio, spread=spread,
            target="<= 2x", met=ratio <= 2.0,
        ))
    return results, {"calls_per_sample": CALLS, "sizes": SIZES}


if __name__ == "__main__":
    res, _ = run_classify(rounds=7)
    for r in res:
        print(f"{r.id}: {r.a:.2f} us vs {r.b:.2f} us at 1 KB, ratio {r.ratio:.2f} "
              f"(spread {r.spread[0]:.2f}-{r.spread[1]:.2f})" if r.spread else r.id)
