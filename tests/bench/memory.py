"""Measure 6: peak RSS of a gateway process, mirror on and off, empty and big store.

One subprocess per configuration (``memory_child``), so each peak is its own:

* mirror off, ``spans`` spans;
* mirror on, a new store, ``spans`` spans;
* mirror on, each big store (1M and 10M attempts in full mode), ``spans`` spans.

Bounded means: the biggest store's peak is within ``GROWTH_LIMIT_MB`` of the new
store's (SQLite's page cache is capped at 2 MiB per connection and the writer has two,
so the store's size must not otherwise reach the process), RSS does not keep growing
between 10% and the end of the run, and the queue never held more than its bound.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from .pruning import REPO, child_env
from .timing import Result

__all__ = ["run_memory"]

GROWTH_LIMIT_MB = 8.0  # peak with the biggest store over the peak with a new store


def _child(spans: int, out: Path, store: Path | None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "tests.bench.memory_child", "--spans", str(spans),
           "--out", str(out)]
    if store is not None:
        cmd += ["--store", str(store)]
    subprocess.run(cmd, cwd=REPO, env=child_env(), check=True, timeout=7200)
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def _label(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n // 1000}k"


def run_memory(
    *, spans: int, big_stores: dict[int, Path], workdir: Path
) -> tuple[list[Result], dict[str, Any]]:
    empty = workdir / "rss-empty.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(empty) + suffix).unlink(missing_ok=True)
    runs = {
        "mirror_off": _child(spans, workdir / "rss-off.json", None),
        "mirror_on_empty": _child(spans, workdir / "rss-empty.json", empty),
    }
    for n, path in sorted(big_stores.items()):
        runs[f"mirror_on_{_label(n)}"] = _child(spans, workdir / f"rss-{n}.json", path)
    big_attempts = max(big_stores)
    runs["mirror_on_big"] = runs[f"mirror_on_{_label(big_attempts)}"]
    mb = {name: r["hwm_kb"] / 1024 for name, r in runs.items()}
    # Bounded = a plateau: no growth over the second half of the run (the first half may
    # still be filling the queue up to its bound).
    growth = {
        name: (r["rss_kb_at"]["100%"] - r["rss_kb_at"].get("50%", r["rss_kb_at"]["100%"])) / 1024
        for name, r in runs.items()
    }
    queue_ok = all(
        r["max_queue"] is None or r["max_queued"] <= r["max_queue"] for r in runs.values()
    )
    drops = {name: {k: v for k, v in r["stats"].items() if k not in ("store.queued",) and v}
             for name, r in runs.items()}
    lost = drops["mirror_on_empty"].get("store.queue_full", 0)
    paced = drops["mirror_on_empty"].get("store.paced", 0)
    big_over_empty = mb["mirror_on_big"] / mb["mirror_on_empty"]
    over_mb = mb["mirror_on_big"] - mb["mirror_on_empty"]
    label = _label(big_attempts)
    by_size = ", ".join(f"{name.removeprefix('mirror_on_')} {v:.1f} MB"
                        for name, v in mb.items() if name.startswith("mirror_on_")
                        and name != "mirror_on_big")
    results = [
        Result(
            id="6-rss-mirror", measure=f"#6 peak RSS writing {spans:,} spans, mirror on vs off",
            a_label="mirror on, new store (MB)", b_label="mirror off (MB)",
            a=mb["mirror_on_empty"], b=mb["mirror_off"], unit="MB",
            ratio=mb["mirror_on_empty"] / mb["mirror_off"], spread=None,
            target="bounded; queue bound respected",
            # Dropping rows is how a full queue stays in bound: bounded memory bought
            # with lost rows is not met.
            met=queue_ok and growth["mirror_on_empty"] <= GROWTH_LIMIT_MB and lost == 0,
            note=(f"RSS growth 50%→end: on {growth['mirror_on_empty']:+.1f} MB, off "
                  f"{growth['mirror_off']:+.1f} MB; longest queue "
                  f"{runs['mirror_on_empty']['max_queued']:,} of "
                  f"{runs['mirror_on_empty']['max_queue']:,}; rows dropped because the queue "
                  f"was full: {lost:,}; calls paced (waited for the indexer): {paced:,}"),
            extra={"runs": runs, "growth_mb": growth, "drops": drops},
        ),
        Result(
            id="6-rss-store-size",
            measure=f"#6 peak RSS with the store at {label} attempts vs a new store",
            a_label=f"mirror on, store at {label} (MB)", b_label="mirror on, new store (MB)",
            a=mb["mirror_on_big"], b=mb["mirror_on_empty"], unit="MB", ratio=big_over_empty,
            spread=None,
            target=f"no growth with store size (≤ {GROWTH_LIMIT_MB:g} MB over a new store)",
            met=over_mb <= GROWTH_LIMIT_MB and queue_ok,
            note=(f"peak by store: {by_size}; {over_mb:+.1f} MB over a new store "
                  f"(page cache: 2 MiB × 2 connections); mirror off {mb['mirror_off']:.1f} MB; "
                  f"longest queue {runs['mirror_on_big']['max_queued']} of "
                  f"{runs['mirror_on_big']['max_queue']}"),
        ),
    ]
    return results, {"rss_mb": mb}
