"""Issue 15: classifying a failure reads only the ends of its error text."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from otel_delivery import default_classifier

_PHRASES = {
    "Forbidden: bot was blocked by the user": "permanent",
    "Bad Request: chat not found": "permanent",
    "Too Many Requests: retry after 7": "transient",
    "read timed out": "transient",
}


@settings(max_examples=100, deadline=None)
@given(
    phrase=st.sampled_from(sorted(_PHRASES)),
    before=st.text(alphabet="abc xyz.:,", max_size=200),
    filler=st.sampled_from(["y", "lorem ipsum ", "\u00e9\u4e2d"]),
    size=st.sampled_from([5_000, 1_000_000, 20_000_000]),
)
def test_a_long_text_is_classified_as_its_first_part_says(
    phrase: str, before: str, filler: str, size: int
) -> None:
    head = f"{before} {phrase} "
    long_text = head + filler * (size // len(filler))
    assert default_classifier(RuntimeError(long_text)) == default_classifier(
        RuntimeError(head)
    ) == _PHRASES[phrase]


def test_classifying_50_mb_of_text_costs_what_a_line_does() -> None:
    short = RuntimeError("Forbidden: bot was blocked by the user")
    huge = RuntimeError("Forbidden: bot was blocked by the user " + "x" * 50_000_000)

    def best(exc: BaseException) -> float:
        times = []
        for _ in range(5):
            started = time.perf_counter()
            default_classifier(exc)
            times.append(time.perf_counter() - started)
        return min(times)

    # Reading all of it took 18.7 s; the ends are a few KB, well under 10 ms anywhere.
    assert best(huge) < 0.01
    assert best(huge) < best(short) * 20 + 0.002
