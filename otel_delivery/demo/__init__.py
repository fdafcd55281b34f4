"""``otel-delivery demo``: a simulated chat gateway that fills the store, then reports on it.

>>> from otel_delivery.demo import run_demo
>>> result = run_demo(store="/tmp/demo.db", seed=7)  # doctest: +SKIP
"""

from __future__ import annotations

from ._result import DemoCounts, DemoResult
from ._run import run_demo
from ._scenario import STORIES
from .exceptions import DemoError

__all__ = ["STORIES", "DemoCounts", "DemoError", "DemoResult", "run_demo"]
