"""The benchmark suite (issue 4): `python -m tests.bench --size small|full`.

Outside the default test run (pyproject's ``--ignore=tests/bench``); the smoke test
``tests/test_bench_smoke.py`` runs it at a tiny size so it cannot rot.
"""
