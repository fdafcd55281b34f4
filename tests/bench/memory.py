"""Measure 6: peak RSS of a gateway process, mirror on and off, empty and big store.

One subprocess per configuration (``memory_child``), so each peak is its own:

* mirror off, ``spans`` spans;
* mirror on, a new store, ``spans`` spans;
* mirror on, the big store (10M attempts in full mode), ``spans`` spans.

Bounded means: the big store's peak is no higher than the empty store's (the store's
size does not reach the process), RSS does not keep growing between 10% and the end
of the run, and the queue never held more than its bound.
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

GROWTH_LIMIT = 1.10  # peak of the big store's run over the empty store's


def _child(spans: int, out: Path, store: Path | None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "tests.bench.memory_child", "--spans", str(spans),
           "--out", str(out)]
    if store is not None:
        cmd += ["--store", str(store)]
    subprocess.run(cmd, cwd=REPO, env=child_env(), check=True, timeout=7200)
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def run_memory(
    *, spans: int, big_store: Path, big_attempts: int, workdir: Path
) -> tuple[list[Result], dict[str, Any]]:
    empty = workdir / "rss-empty.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(empty) + suffix).unlink(missing_ok=True)
    runs = {
        "mirror_off": _child(spans, workdir / "rss-off.json", None),
        "mirror_on_empty": _child(spans, workdir / "rss-empty.json", empty),
        "mirror_on_big": _child(spans, workdir / "rss-big.json", big_store),
    }
    mb = {name: r["hwm_kb"] / 1024 for name, r in runs.items()}
    growth = {
        name: (r["rss_kb_at"]["100%"] - r["rss_kb_at"].get("10%", r["rss_kb_at"]["100%"])) / 1024
        for name, r in runs.items()
    }
    queue_ok = all(
        r["max_queue"] is None or r["max_queued"] <= r["max_queue"] for r in runs.values()
    )
    drops = {name: {k: v for k, v in r["stats"].items() if k not in ("store.queued",) and v}
             for name, r in runs.items()}
    big_over_empty = mb["mirror_on_big"] / mb["mirror_on_empty"]
    label = f"{big_attempts / 1e6:.1f}M" if big_attempts >= 1e6 else f"{big_attempts // 1000}k"
    results = [
        Result(
            id="6-rss-mirror", measure=f"#6 peak RSS writing {spans:,} spans, mirror on vs off",
            a_label="mirror on, new store (MB)", b_label="mirror off (MB)",
            a=mb["mirror_on_empty"], b=mb["mirror_off"], unit="MB",
            ratio=mb["mirror_on_empty"] / mb["mirror_off"], spread=None,
            target="bounded; queue bound respected",
            met=queue_ok and growth["mirror_on_empty"] <= max(8.0, 0.1 * mb["mirror_on_empty"]),
            note=(f"RSS growth 10%→end: on {growth['mirror_on_empty']:+.1f} MB, off "
                  f"{growth['mirror_off']:+.1f} MB; longest queue "
                  f"{runs['mirror_on_empty']['max_queued']} of "
                  f"{runs['mirror_on_empty']['max_queue']}"),
            extra={"runs": runs, "growth_mb": growth, "drops": drops},
        ),
        Result(
            id="6-rss-store-size",
            measure=f"#6 peak RSS with the store at {label} attempts vs a new store",
            a_label=f"mirror on, store at {label} (MB)", b_label="mirror on, new store (MB)",
            a=mb["mirror_on_big"], b=mb["mirror_on_empty"], unit="MB", ratio=big_over_empty,
            spread=None, target="no growth with store size (≤ 1.10×)",
            met=big_over_empty <= GROWTH_LIMIT and queue_ok,
            note=(f"mirror off {mb['mirror_off']:.0f} MB; longest queue "
                  f"{runs['mirror_on_big']['max_queued']} of {runs['mirror_on_big']['max_queue']}"),
        ),
    ]
    return results, {"rss_mb": mb}
