"""Measures 5 and 7: prune a tenth of the store while a gateway keeps writing; size.

A writer process (``writer_child``) makes an attempt every few milliseconds through
``StoreWriter``'s hot path. Its latencies are recorded for a quiet window, then while
``local_store.prune`` removes the oldest three of the store's thirty days (about a
tenth), then for another quiet window. The prune is one-shot (it cannot be repeated
on the same rows), so the quiet windows before and after are its side-by-side
baseline.

Measure 7 reads the file's size (WAL checkpointed) before and after that prune,
which ends with ``PRAGMA incremental_vacuum``, and again after the documented step
that follows a large prune, ``compact`` (``otel-delivery prune --compact``); and the
store's bytes per attempt, all-in, against the 400-byte target.
"""

from __future__ import annotations

import bisect
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from local_store import compact, open_store, prune
from tests import rawdb

from .timing import Result

__all__ = ["run_prune"]

REPO = Path(__file__).resolve().parents[2]
DAY_SECONDS = 86_400
STALL_LIMIT_MS = 100.0


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def store_size(path: Path) -> dict[str, int]:
    """File size with the WAL folded in, and the page counts."""
    conn = rawdb.connect(path, timeout=30)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        attempts = conn.execute("SELECT MAX(id) - MIN(id) + 1 FROM attempts").fetchone()[0]
        (count,) = conn.execute("SELECT COUNT(*) FROM attempts").fetchone()
        rows = sum(
            conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
            for t in ("attempts", "inbound_messages", "ai_runs", "enqueues", "writers")
        )
    finally:
        conn.close()
    wal = path.with_name(path.name + "-wal")
    return {
        "bytes": path.stat().st_size, "wal_bytes": wal.stat().st_size if wal.exists() else 0,
        "pages": pages, "freelist": free, "page_size": page_size, "attempts": count,
        "rows": rows,
        "attempt_id_span": attempts or 0,
    }


def page_breakdown(path: Path) -> dict[str, dict[str, float]]:
    """Pages per table and index, and how full their leaves are (SQLite's dbstat).

    Shows where space stays after a prune: a table or time-ordered index loses whole
    pages, a random-key index only gets sparser.
    """
    conn = rawdb.connect(path, timeout=30)
    try:
        rows = conn.execute(
            "SELECT name, COUNT(*), SUM(CASE WHEN pagetype = 'leaf' THEN pgsize - unused END),"
            " SUM(CASE WHEN pagetype = 'leaf' THEN pgsize END) FROM dbstat GROUP BY name"
        ).fetchall()
    except sqlite3.OperationalError:  # SQLite built without dbstat
        return {}
    finally:
        conn.close()
    return {
        name: {"pages": pages, "leaf_fill": round(used / size, 3) if size else 0.0}
        for name, pages, used, size in sorted(rows, key=lambda r: -r[1])
    }


_TABLES = ("attempts", "inbound_messages", "ai_runs", "enqueues")
_RANDOM_KEY = ("idx_attempts_span", "idx_attempts_delivery", "idx_attempts_trace",
               "idx_inbound_trace", "idx_runs_trace", "idx_enqueues_trace",
               "idx_inbound_inbound_id")


def shrink_by_group(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]
) -> dict[str, float]:
    """Share of pages each kind of b-tree gave up: tables, random-key indexes, the rest."""
    def group(name: str) -> str:
        if name in _TABLES:
            return "tables"
        if name in _RANDOM_KEY:
            return "random-key indexes"
        return "time/status indexes" if name.startswith("idx_") else "other"

    totals: dict[str, list[float]] = {}
    for name, b in before.items():
        t = totals.setdefault(group(name), [0.0, 0.0])
        t[0] += b["pages"]
        t[1] += after.get(name, {"pages": 0})["pages"]
    return {g: round(1 - a / b, 3) for g, (b, a) in totals.items() if b}


def _latency_stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0, "median_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    ms = sorted(v * 1e3 for v in values)
    p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))]
    return {"n": len(ms), "median_ms": statistics.median(ms), "p99_ms": p99, "max_ms": ms[-1]}


def _kind(sql: str) -> str:
    words = sql.split()
    head = " ".join(words[:2]).upper()
    if head.startswith("DELETE FROM") and len(words) > 2:
        return f"DELETE FROM {words[2]}"
    if head.startswith("PRAGMA"):
        return "PRAGMA " + words[1].split("(")[0]
    return words[0].upper() if words else "?"


def _blame(
    statements: list[tuple[float, str]], during: list[list[Any]]
) -> dict[str, int]:
    """For each writer call that waited over 20 ms, the prune statement running when it
    began (the last one started before it)."""
    starts = [t for t, _ in statements]
    out: dict[str, int] = {}
    for t0, start_s, end_s, *_ in during:
        if max(start_s, end_s) < 0.020:
            continue
        i = bisect.bisect_right(starts, t0) - 1
        kind = _kind(statements[i][1]) if i >= 0 else "before prune"
        out[kind] = out.get(kind, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _phases(statements: list[tuple[float, str]], p0: float, p1: float) -> dict[str, float]:
    """Seconds spent finding and deleting, vacuuming, analysing.

    Prune checkpoints (PASSIVE) after every write of every phase, so checkpoints are
    not a phase of their own: their time is in the phase they follow.
    """
    marks: list[tuple[str, float]] = [("delete", p0)]
    for name, prefix in (("incremental_vacuum", "PRAGMA incremental_vacuum"),
                         ("analyze", "ANALYZE")):
        first = next((t for t, sql in statements if sql.lstrip().startswith(prefix)), None)
        if first is not None:
            marks.append((name, first))
    marks.sort(key=lambda m: m[1])
    marks.append(("end", p1))
    return {name: round(marks[i + 1][1] - t, 3) for i, (name, t) in enumerate(marks[:-1])}


def run_prune(
    *, store: Path, now_ms: int, quiet_seconds: float, workdir: Path, batch_size: int | None = None
) -> tuple[list[Result], dict[str, Any]]:
    before = store_size(store)
    pages_before = page_breakdown(store)
    ready, stop, out = workdir / "writer.ready", workdir / "writer.stop", workdir / "writer.json"
    for f in (ready, stop, out):
        f.unlink(missing_ok=True)
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.bench.writer_child", "--store", str(store),
         "--out", str(out), "--ready", str(ready), "--stop", str(stop)],
        cwd=REPO, env=child_env(),
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            if child.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the writer process did not start")
            time.sleep(0.05)
        time.sleep(quiet_seconds)
        db = open_store(store)
        kwargs: dict[str, Any] = {} if batch_size is None else {"batch_size": batch_size}
        # When each of prune's statements started, to tell which one a writer waited on.
        statements: list[tuple[float, str]] = []
        db.conn.set_trace_callback(lambda sql: statements.append((time.monotonic(), sql)))
        p0 = time.monotonic()
        try:
            pruned = prune(
                db, older_than_seconds=27 * DAY_SECONDS, keep_failed_for_seconds=27 * DAY_SECONDS,
                now_ms=now_ms, **kwargs,
            )
        finally:
            p1 = time.monotonic()
            db.conn.set_trace_callback(None)
            db.close()
        time.sleep(quiet_seconds)
    finally:
        stop.write_text("stop")
        child.wait(60)
    data = json.loads(out.read_text())
    after = store_size(store)
    pages_after = page_breakdown(store)
    # The documented step after a large prune (``prune --compact``), timed.
    db = open_store(store)
    try:
        compacted = compact(db, store)
    finally:
        db.close()
    after_compact = store_size(store)

    records = data["records"]
    settle = records[0][0] + 0.5 if records else 0.0
    during = [r for r in records if p0 <= r[0] <= p1]
    quiet = [r for r in records if r[0] >= settle and not p0 <= r[0] <= p1]
    stall = {
        "during_prune": _latency_stats([max(r[1], r[2]) for r in during]),
        "no_prune": _latency_stats([max(r[1], r[2]) for r in quiet]),
    }
    # Start rows that got no number: the store could not be read within the bound.
    deferred = {"during_prune": sum(r[3] for r in during), "no_prune": sum(r[3] for r in quiet)}
    # Rows the writer's background thread had not committed yet (journaled attempts
    # wait there while prune holds the write lock).
    backlog = {"during_prune": max((r[4] for r in during), default=0),
               "no_prune": max((r[4] for r in quiet), default=0)}
    lost = sum(v for k, v in data["stats"].items() if k in ("queue_full", "lost_at_close"))
    blame = _blame(statements, during)
    phases = _phases(statements, p0, p1)
    seconds = p1 - p0
    deleted = sum(pruned.deleted.values())
    rows_per_s = deleted / seconds if seconds > 0 else float("nan")
    d, q = stall["during_prune"], stall["no_prune"]
    met = (d["n"] > 0 and d["max_ms"] <= STALL_LIMIT_MS and deferred["during_prune"] == 0
           and lost == 0)
    results = [Result(
        id="5-prune", measure=f"#5 prune {pruned.deleted['attempts']:,} of "
        f"{before['attempts']:,} attempts, writer running",
        a_label="writer p99 stall during prune (ms)", b_label="writer p99, no prune (ms)",
        a=d["p99_ms"], b=q["p99_ms"], unit="ms",
        ratio=d["p99_ms"] / q["p99_ms"] if q["n"] and q["p99_ms"] > 0 else None, spread=None,
        target="writer never stalls > 100 ms", met=met,
        note=(f"{rows_per_s:,.0f} rows/s ({deleted:,} rows in {seconds:.1f} s, "
              f"{pruned.batches} batches); writer max {d['max_ms']:.1f} ms during vs "
              f"{q['max_ms']:.1f} ms without; start rows without a number "
              f"(the store unreadable within 50 ms): {deferred['during_prune']} during, "
              f"{deferred['no_prune']} without; rows waiting for the background commit: "
              f"at most {backlog['during_prune']} during, {backlog['no_prune']} without; "
              f"writer rows lost: {lost}"),
        extra={"stall": stall, "deferred": deferred, "backlog_rows": backlog,
               "writer_rows_lost": lost, "prune": pruned.to_dict(),
               "prune_seconds": seconds, "rows_per_second": rows_per_s,
               "prune_phases_seconds": phases, "stalls_over_20ms_by_prune_statement": blame,
               "writer_stats": data["stats"]},
    )]
    per_m_before = before["bytes"] / before["attempts"] * 1e6
    per_m_after = after["bytes"] / after["attempts"] * 1e6
    # Shares from the prune itself, so the writer's new rows do not blur them.
    deleted_share = deleted / before["rows"] if before["rows"] else 0.0
    freed_share = pruned.pages_freed / pruned.page_count_before
    give_back = freed_share / deleted_share if deleted_share > 0 else None
    shrink = shrink_by_group(pages_before, pages_after)
    by_kind = ", ".join(f"{g} {v:.1%}" for g, v in shrink.items() if g != "other")
    results.append(Result(
        id="7-size", measure="#7 store size per 1M attempts, before → after prune + vacuum",
        a_label="MB per 1M attempts before", b_label="MB per 1M attempts after",
        a=per_m_before / 1e6, b=per_m_after / 1e6, unit="MB",
        ratio=give_back, spread=None,
        target="reported; space really comes back (file shrinks with the rows)",
        met=give_back is not None and give_back >= 0.8,
        note=(f"file {before['bytes'] / 1e6:,.0f} → {after['bytes'] / 1e6:,.0f} MB; prune "
              f"freed {freed_share:.1%} of the pages for {deleted_share:.1%} of the rows "
              f"(ratio = freed share / deleted share); pages given up by {by_kind}; "
              f"freelist after {after['freelist']} pages; sizes include each attempt's "
              "inbound, run and enqueue rows"),
        extra={"before": before, "after": after, "pages_before": pages_before,
               "pages_after": pages_after, "shrink_by_group": shrink},
    ))
    file_share = 1 - after_compact["bytes"] / before["bytes"]
    # The writer's own rows added meanwhile are counted as kept, on both sides.
    kept_rows_share = 1 - deleted / (after_compact["rows"] + deleted)
    results.append(Result(
        id="7-compact", measure="#7 file given back by prune + compact, vs rows deleted",
        a_label="share of the file given back", b_label="share of the rows deleted",
        a=file_share, b=1 - kept_rows_share, unit="share",
        ratio=file_share / (1 - kept_rows_share) if kept_rows_share < 1 else None,
        spread=None, target="within 5 points of the rows' share",
        met=abs(file_share - (1 - kept_rows_share)) <= 0.05,
        note=(f"file {before['bytes'] / 1e6:,.0f} → {after['bytes'] / 1e6:,.0f} MB after "
              f"prune → {after_compact['bytes'] / 1e6:,.0f} MB after compact "
              f"({compacted.seconds:.1f} s holding the write lock); rows "
              f"{before['rows']:,} → {after_compact['rows']:,}"),
        extra={"after_compact": after_compact, "compact": compacted.to_dict()},
    ))
    per_attempt = before["bytes"] / before["attempts"]
    results.append(Result(
        id="7-bytes", measure=f"#7 store bytes per attempt, all-in, at {before['attempts']:,}",
        a_label="bytes per attempt", b_label="target bytes per attempt",
        a=per_attempt, b=400.0, unit="B", ratio=per_attempt / 400.0, spread=None,
        target="≤ 400 B per attempt (its inbound, run and enqueue rows, every index)",
        met=per_attempt <= 400.0,
        note=f"file {before['bytes']:,} bytes for {before['attempts']:,} attempts",
        extra={"before": before},
    ))
    return results, {"writer_records": len(records)}
