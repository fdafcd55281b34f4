"""Measure 4: the operator's questions at N attempts, against the seed's folder scan.

Each query is what the CLI runs: ``open_store(path)``, the ``local_store`` function,
close. The baseline answers "failures this week by channel" the way the seed
gateway's operator must: read every JSON file in a ``failed/`` folder (one per
failed delivery, 10k of them) and count. Every query is alternated with the scan,
round by round; the page cache is warm for both.

With a profile directory, each query's SQL statements are captured (with their
parameters), timed one by one, and written with their ``EXPLAIN QUERY PLAN``.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import local_store
from local_store import open_store
from tests import rawdb

from .timing import Result, alternate, ratio_stats
from .traffic import CHANNELS, DAY_MS

__all__ = ["build_failed_folder", "run_queries", "scan_failed_folder"]

WEEK_MS = 7 * DAY_MS
QUERY_TARGET_MS = {"trace": 5.0}
DEFAULT_TARGET_MS = 50.0


def build_failed_folder(folder: Path, files: int, *, end_ms: int, seed: int = 7) -> None:
    """``files`` failed-delivery entries like the seed's ``delivery-queue/failed/*.json``,
    spread over 30 days, with a reply payload of a few hundred bytes to a few KB."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    channels, weights = list(CHANNELS), list(CHANNELS.values())
    for i in range(files):
        entry_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        at = end_ms - rng.randrange(30 * DAY_MS)
        entry = {
            "id": entry_id,
            "channel": rng.choices(channels, weights)[0],
            "to": str(rng.randrange(10**9)),
            "accountId": "default",
            "payloads": [{"text": "word " * rng.randint(40, 800)}],
            "enqueuedAt": at - 60_000,
            "retryCount": rng.randint(1, 5),
            "lastAttemptAt": at,
            "lastError": "Forbidden: bot was blocked by the user",
        }
        (folder / f"{entry_id}.json").write_text(json.dumps(entry))
        del i


def scan_failed_folder(folder: Path, now_ms: int) -> Counter[str]:
    """Failures this week by channel, from the folder (the seed's only way)."""
    since = now_ms - WEEK_MS
    counts: Counter[str] = Counter()
    with os.scandir(folder) as it:
        for entry in it:
            if not entry.name.endswith(".json"):
                continue
            with open(entry.path, encoding="utf-8") as f:
                data = json.load(f)
            if data.get("lastAttemptAt", 0) >= since:
                counts[data.get("channel", "?")] += 1
    return counts


def _queries(
    now_ms: int, inbound_ids: list[str]
) -> dict[str, Callable[[Any], Any]]:
    picks = iter(inbound_ids * 1000)
    return {
        "summary --since 7d --by channel": lambda db: local_store.summary(
            db, since_seconds=7 * 86400, by="channel", now_ms=now_ms
        ),
        "failures (first page)": lambda db: local_store.failures(db, limit=50, now_ms=now_ms),
        "trace --inbound": lambda db: local_store.trace_story(
            db, inbound_id=next(picks), now_ms=now_ms
        ),
        "undelivered --since 1d": lambda db: local_store.undelivered(
            db, since_seconds=86400, now_ms=now_ms
        ),
        "health": lambda db: local_store.health(db, now_ms=now_ms),
    }


def _cli_like(store: Path, fn: Callable[[Any], Any], budget_seconds: float) -> Callable[[], float]:
    """One sample: open, query, close, repeated until ``budget_seconds`` (at least once)."""

    def sample() -> float:
        n = 0
        t0 = time.perf_counter()
        while True:
            db = open_store(store)
            try:
                fn(db)
            finally:
                db.close()
            n += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= budget_seconds or n >= 20:
                return elapsed / n

    return sample


def pick_inbound_ids(store: Path, k: int, seed: int = 3) -> list[str]:
    """Inbound ids spread over the store, a third of them from traces with a failure."""
    conn = rawdb.connect(store)
    try:
        (lo, hi) = conn.execute("SELECT MIN(id), MAX(id) FROM inbound_messages").fetchone()
        rng = random.Random(seed)
        ids = []
        for _ in range(k):
            row = conn.execute(
                "SELECT inbound_id FROM inbound_messages WHERE id >= ? LIMIT 1",
                (rng.randint(lo, hi),),
            ).fetchone()
            ids.append(row[0])
        failed = conn.execute(
            "SELECT inbound_id FROM attempts WHERE status = 'failed' AND id >= ? LIMIT ?",
            (rng.randint(lo, hi) // 2, k // 3),
        ).fetchall()
        ids[: len(failed)] = [r[0] for r in failed]
        return ids
    finally:
        conn.close()


def run_queries(
    *,
    store: Path,
    attempts: int,
    now_ms: int,
    folder: Path,
    folder_files: int,
    rounds: int,
    warmup: int,
    target_size: int,
    profile_dir: Path | None,
) -> tuple[list[Result], dict[str, Any]]:
    queries = _queries(now_ms, pick_inbound_ids(store, 30))
    scan = _scan_sample(folder, now_ms)
    results: list[Result] = []
    extra: dict[str, Any] = {"attempts": attempts, "folder_files": folder_files}
    at_target = attempts >= target_size
    label = _size_label(attempts)
    for name, fn in queries.items():
        key = name.split()[0]
        limit = QUERY_TARGET_MS.get(key, DEFAULT_TARGET_MS)
        r = alternate(
            {"query": _cli_like(store, fn, 0.05), "scan": scan}, rounds=rounds, warmup=warmup
        )
        med, spread = ratio_stats(r.ratios("query", "scan"))
        q_ms = r.median("query") * 1e3
        met = q_ms <= limit and med < 1.0
        note = f"{label} attempts; median {q_ms:.1f} ms (limit {limit:g} ms at 10M)"
        if not at_target:
            note += f"; target size is {_size_label(target_size)}, this is not it"
        results.append(Result(
            id=f"4-{key}-{label}", measure=f"#4 {name} @ {label}",
            a_label="query (open + run + close)",
            b_label=f"scan failed/ ({folder_files} JSON files)",
            a=q_ms, b=r.median("scan") * 1e3, unit="ms", ratio=med, spread=spread,
            target=f"≤ {limit:g} ms and < 1× scan (at 10M)",
            met=met if at_target else None, note=note,
            extra={"would_meet_at_this_size": met},
        ))
    if profile_dir is not None:
        extra["statements"] = profile_statements(
            store, queries, profile_dir / f"profile-queries-{label}.txt"
        )
    return results, extra


def _scan_sample(folder: Path, now_ms: int) -> Callable[[], float]:
    def sample() -> float:
        t0 = time.perf_counter()
        scan_failed_folder(folder, now_ms)
        return time.perf_counter() - t0

    return sample


def _size_label(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1_000_000:
        return f"{n / 1_000_000:.1f}M"
    if n >= 1000:
        return f"{n // 1000}k"
    return str(n)


def profile_statements(
    store: Path, queries: dict[str, Callable[[Any], Any]], out: Path
) -> dict[str, list[dict[str, Any]]]:
    """Each query's statements, timed one by one, with their query plans."""
    report: dict[str, list[dict[str, Any]]] = {}
    lines: list[str] = []
    for name, fn in queries.items():
        db = open_store(store)
        captured: list[str] = []
        try:
            db.conn.set_trace_callback(captured.append)
            fn(db)
            db.conn.set_trace_callback(None)
            stmts = []
            for sql in captured:
                head = sql.lstrip().split(None, 1)[0].upper()
                if head not in ("SELECT", "WITH"):
                    continue
                t0 = time.perf_counter()
                db.conn.execute(sql).fetchall()
                ms = (time.perf_counter() - t0) * 1e3
                plan = [r[3] for r in db.conn.execute("EXPLAIN QUERY PLAN " + sql)]
                stmts.append({"ms": round(ms, 2), "sql": " ".join(sql.split()), "plan": plan})
        finally:
            db.close()
        stmts.sort(key=lambda s: s["ms"], reverse=True)
        report[name] = [{"ms": s["ms"], "sql": s["sql"][:160]} for s in stmts[:3]]
        lines.append(f"=== {name}: {len(stmts)} statements, {sum(s['ms'] for s in stmts):.1f} ms")
        for s in stmts:
            lines.append(f"--- {s['ms']:.2f} ms")
            lines.append(s["sql"][:2000])
            lines.extend(f"    plan: {p}" for p in s["plan"])
        lines.append("")
    out.write_text("\n".join(lines))
    return report
